"""Daily TLS reports (RFC 8460): the day's noted results, per policy domain, to its ``rua``.

The results of a UTC day are the lines mailflow/relay/tlsrpt.py appended to
``<state>/tlsrpt/<day>.jsonl``.  Once the day is over, each policy domain whose
``_smtp._tls`` TXT record names a ``rua`` gets one report: the RFC's JSON, gzipped,
as a mail (``mailto:``, queued like any other and so DKIM-signed; exempt from the
domain's own MTA-STS and DANE policy, which may be what is broken) or POSTed
(``https:``).  What was sent is recorded beside the day's file, so a crash or a
receiver that is down means a later run sends the rest; after ``GIVE_UP`` runs a
day is closed with a log line.
"""

from __future__ import annotations

import calendar
import gzip
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from mailflow import outbound
from mailflow.codes import OK
from mailflow.config.loader import Config
from mailflow.relay import http
from mailflow.relay.mx import resolver
from mailflow.relay.tlsrpt import SUCCESS, TLS_REPORT_NOTE, day, directory
from mailflow.util.atomic import one_at_a_time, replace_text

log = logging.getLogger(__name__)

#: Runs after which a day whose reports could not all be sent is given up.
GIVE_UP = 48
MEDIA_TYPE = "application/tlsrpt+gzip"


def finished_days(now: float | None = None) -> list[Path]:
    """The day files before today's (UTC) that are not closed yet, oldest first."""
    today = day(now)
    try:
        files = sorted(directory().glob("*.jsonl"))
    except OSError:
        return []
    return [f for f in files if f.stem < today]


def summarise(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``policies`` of each policy domain's report (8460 4.4), from one day's notes."""
    sessions: dict[tuple[str, str, tuple[str, ...]], Counter[tuple[str, str, str, str]]] = \
        defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        try:
            note = json.loads(line)
            key = (str(note["d"]), str(note["t"]), tuple(str(s) for s in note["p"]))
            sessions[key][(str(note["r"]), str(note["mx"]), str(note["ip"]), str(note.get("why", "")))] += 1
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash: the rest still counts
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (domain, kind, strings), counts in sessions.items():
        ok = sum(n for (result, *_), n in counts.items() if result == SUCCESS)
        failures = [{"result-type": result, "receiving-mx-hostname": mx,
                     **({"receiving-ip": ip} if ip != "-" else {}),
                     "failed-session-count": n, **({"additional-information": why} if why else {})}
                    for (result, mx, ip, why), n in sorted(counts.items()) if result != SUCCESS]
        policy: dict[str, Any] = {"policy-type": kind if strings else "no-policy-found",
                                  "policy-string": list(strings), "policy-domain": domain}
        mx_hosts = [s.split(":", 1)[1].strip() for s in strings if s.startswith("mx:")] if kind == "sts" \
            else sorted({mx for (_, mx, _, _) in counts})
        if mx_hosts:
            policy["mx-host"] = mx_hosts
        out[domain].append({"policy": policy, "summary": {
            "total-successful-session-count": ok,
            "total-failure-session-count": sum(counts.values()) - ok},
            **({"failure-details": failures} if failures else {})})
    return dict(out)


def report(domain: str, policies: list[dict[str, Any]], on_day: str, me: str) -> dict[str, Any]:
    return {
        "organization-name": me,
        "date-range": {"start-datetime": f"{on_day}T00:00:00Z", "end-datetime": f"{on_day}T23:59:59Z"},
        "contact-info": f"postmaster@{me}",
        "report-id": f"{on_day}.{domain}.{uuid.uuid4().hex[:12]}@{me}",
        "policies": policies,
    }


def rua(domain: str, cfg: Config) -> list[str]:
    """The ``rua`` URIs of the domain's one ``v=TLSRPTv1`` record at ``_smtp._tls`` (8460 3)."""
    try:
        answer = resolver(cfg.outbound).resolve(f"_smtp._tls.{domain}", "TXT")
    except dns.exception.DNSException:
        return []
    records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    records = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(records) != 1:
        return []
    fields = dict(p.strip().partition("=")[::2] for p in records[0].split(";") if "=" in p)
    return [u.strip() for u in fields.get("rua", "").split(",") if u.strip().startswith(("mailto:",
                                                                                          "https:"))]


def filename(me: str, domain: str, on_day: str, report_id: str) -> str:
    """8460 5.3: sender!policy-domain!begin!end!unique-id.json.gz (begin and end in epoch s)."""
    begin = calendar.timegm(time.strptime(on_day, "%Y-%m-%d"))
    return f"{me}!{domain}!{begin}!{begin + 86399}!{report_id.split('@')[0]}.json.gz"


def mail(me: str, domain: str, to: str, data: dict[str, Any], gz: bytes) -> bytes:
    """8460 5.3: multipart/report; report-type="tlsrpt", the report attached gzipped."""
    msg = EmailMessage()
    msg["From"] = f"TLS reporting <postmaster@{me}>"
    msg["To"] = to
    msg["Subject"] = f"Report Domain: {domain} Submitter: {me} Report-ID: <{data['report-id']}>"
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=me)
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = me
    msg.set_content(f"This is an aggregate TLS report from {me} for {domain}, "
                    f"{data['date-range']['start-datetime'][:10]}.\n")
    msg.add_attachment(gz, maintype="application", subtype="tlsrpt+gzip",
                       filename=filename(me, domain, data["date-range"]["start-datetime"][:10],
                                         data["report-id"]))
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes()


def send(uri: str, domain: str, data: dict[str, Any], cfg: Config) -> None:
    """One report to one ``rua``; raises on failure (queueing refused, or no 2xx)."""
    gz = gzip.compress(json.dumps(data, indent=1).encode())
    if uri.startswith("mailto:"):
        if not cfg.queue_path().exists():
            raise OSError("no queue directory on this host (a worker host) to queue a mail report in")
        to = uri[len("mailto:"):].split("?")[0]
        code, text = outbound.send_email(f"postmaster@{cfg.me}", [to], mail(cfg.me, domain, to, data, gz),
                                         notes={TLS_REPORT_NOTE: True})
        if code is not OK:
            raise OSError(f"report mail to {to} not queued: {text}")
        return
    response = http.request(uri, cfg.outbound, cfg.tls_outbound, method="POST", body=gz,
                             headers={"Content-Type": MEDIA_TYPE})
    if not 200 <= response.status < 300:
        raise OSError(f"POST {uri} answered HTTP {response.status}")


def _state(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.with_suffix(".state").read_text()))
    except (OSError, ValueError):
        return {"sent": [], "runs": 0}


def _save(path: Path, state: dict[str, Any]) -> None:
    replace_text(path.with_suffix(".state"), json.dumps(state))


def send_due_locked(cfg: Config) -> int:
    """``send_due`` by one process of the host at a time (every worker runs the daily timer)."""
    try:
        with one_at_a_time(directory() / ".sending") as mine:
            return send_due(cfg) if mine else 0
    except OSError as exc:
        log.warning("TLS reports not sent: %s", exc)
        return 0


def send_due(cfg: Config, now: float | None = None) -> int:
    """Send every finished day's reports not yet sent; the number sent."""
    sent = 0
    for path in finished_days(now):
        state = _state(path)
        left = 0
        for domain, policies in summarise(path).items():
            uris = [u for u in rua(domain, cfg) if f"{domain} {u}" not in state["sent"]]
            data = report(domain, policies, path.stem, cfg.me)
            for uri in uris:
                try:
                    send(uri, domain, data, cfg)
                except (OSError, http.HttpError) as exc:
                    log.warning("TLS report for %s (%s) to %s not sent: %s", domain, path.stem, uri, exc)
                    left += 1
                    continue
                log.info("TLS report for %s (%s) sent to %s", domain, path.stem, uri)
                state["sent"].append(f"{domain} {uri}")
                sent += 1
        state["runs"] += 1
        if left and state["runs"] < GIVE_UP:
            _save(path, state)
            continue
        if left:
            log.error("TLS reports of %s: %d not sent after %d runs; giving up", path.stem, left,
                      state["runs"])
        path.rename(path.with_suffix(".sent"))
        path.with_suffix(".state").unlink(missing_ok=True)
    return sent
