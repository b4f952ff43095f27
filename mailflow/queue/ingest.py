"""A report that came back, matched to its original and acted on (``mailflow ingest``,
the inbound listener).

The original is found by a VERP address the report was sent to or quotes
(mailflow/queue/verp.py), else by the Message-ID it quotes, in the index of what was
queued (mailflow/queue/tracking.py), which gives its tenant and campaign.  A complaint
puts each complainant on the suppression list (reason ``complaint``) and emits a
``complained`` event; a late bounce emits ``bounced`` for each failed recipient, which is
suppressed when its class says so (``classify.ini [actions] suppress``), with the DSN's
status as the reason.  A report whose original is not found is said in the log and
otherwise left: nothing is suppressed on a guess.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from mailflow import logs
from mailflow.classify.rules import classify
from mailflow.config.loader import Config
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE
from mailflow.errors import Reply
from mailflow.queue import events, tracking, verp
from mailflow.reports.returned import BOUNCE, Returned
from mailflow.suppress import store as suppression

log = logging.getLogger(__name__)

_CODE = re.compile(r"^([245]\d\d)[ -]")


@dataclass(frozen=True)
class Original:
    """What a report was matched to."""

    id: str  #: the entry id (from a VERP address) or the queue id (from the index)
    recipients: list[str]  #: whom the report is about, as far as the match tells
    sent: tracking.Sent | None  #: the index's line, when it has one


def match(cfg: Config, report: Returned) -> Original | None:
    index = tracking.index_for(cfg.queue_path())
    for address in report.return_paths:
        found = verp.parse(address, cfg.outbound.verp_domain)
        if found is None:
            continue
        entry_id, rcpt = found
        sent = index.by_id(entry_id)
        # anyone can write to the return path: only an entry mailflow queued, for that recipient
        if sent is not None and rcpt.lower() in {r.lower() for r in sent.entries.get(entry_id, [])}:
            return Original(entry_id, [rcpt], sent)
    sent = index.by_message_id(report.message_id) if report.message_id else None
    if sent is None:
        return None
    return Original(sent.id, sent.recipients(), sent)


def take(cfg: Config, report: Returned) -> str:
    """Act on ``report``; what was done, in one line (also logged)."""
    original = match(cfg, report)
    if original is None:
        logs.event("unmatched", report=report.kind, message_id=report.message_id or "-",
                   reporter=report.reporter or "-")
        return f"{report.kind}: no original found (Message-ID {report.message_id or 'none'})"
    if report.kind == BOUNCE:
        return _bounced(cfg, report, original)
    return _complained(cfg, report, original)


def _labels(original: Original) -> dict[str, str]:
    sent = original.sent
    found = {TENANT_NOTE: sent.tenant, CAMPAIGN_NOTE: sent.campaign} if sent is not None else {}
    return {k: str(v) for k, v in found.items() if v}


def _data(original: Original, rcpts: list[str], **more: object) -> dict[str, object]:
    sent = original.sent
    return {"id": original.id, "domain": rcpts[0].rpartition("@")[2] if rcpts else "",
            "mail_from": sent.mail_from if sent is not None else "", "rcpt_to": rcpts, **more,
            **_labels(original)}


def _complained(cfg: Config, report: Returned, original: Original) -> str:
    """Each complainant off the list from now on: the one the VERP address names, else those the
    report names that the original was sent to, else the original's only recipient."""
    known = {r.lower() for r in original.recipients}
    if len(original.recipients) == 1:
        rcpts = original.recipients
    else:
        rcpts = [r for r in report.complainants if r.lower() in known]
    store = suppression.for_config(cfg)
    for rcpt in rcpts:
        try:
            store.add(suppression.Entry(address=suppression.normal(rcpt), reason="complaint",
                                        since=time.time()))
        except OSError as exc:
            log.warning("%s not added to the suppression list: %s", rcpt, exc)
        logs.event("complained", id=original.id, rcpt=rcpt, type=report.feedback_type or "-",
                   reporter=report.reporter or "-", **_labels(original))
    if rcpts:
        events.emit(cfg, "complained", _data(original, rcpts, status="", response=report.feedback_type,
                                             feedback_type=report.feedback_type, reporter=report.reporter))
    return f"complaint: {original.id} rcpt={','.join(rcpts) or 'none known'} suppressed"


def _bounced(cfg: Config, report: Returned, original: Original) -> str:
    """Each failed recipient of the DSN that the original was sent to: ``bounced``, and
    suppressed when its reply's class says so."""
    known = {r.lower(): r for r in original.recipients}
    failed = [r for r in report.recipients if r.action == "failed"]
    if len(original.recipients) == 1 and len(failed) == 1:  # a VERP address says whom
        pairs = [(original.recipients[0], failed[0])]
    else:
        pairs = [(known[r.address.lower()], r) for r in failed if r.address.lower() in known]
    store = suppression.for_config(cfg)
    done = []
    for rcpt, status in pairs:
        reply = _reply(status.diagnostic, status.status)
        cls = classify(reply, "", cfg.classify)[0]
        suppressed = suppression.suppresses(reply, cls, cfg.classify_actions.suppress)
        if suppressed:
            try:
                store.add(suppression.Entry(address=suppression.normal(rcpt),
                                            reason=f"{status.status} {status.diagnostic}".strip(),
                                            since=time.time()))
            except OSError as exc:
                log.warning("%s not added to the suppression list: %s", rcpt, exc)
        logs.event("returned", id=original.id, rcpt=rcpt, status=status.status or "-",
                   response=status.diagnostic or "-", **{"class": cls},
                   suppressed="Y" if suppressed else "N", **_labels(original))
        events.emit(cfg, "bounced", _data(original, [rcpt], status=status.status,
                                          response=status.diagnostic, host=report.reporter or "-",
                                          bounce_class=cls, late=True))
        done.append(f"{rcpt} ({status.status}, {cls}{', suppressed' if suppressed else ''})")
    return f"bounce: {original.id} " + ("; ".join(done) if done else "no failed recipient of it")


def _reply(diagnostic: str, status: str) -> Reply:
    """The remote refusal of the recipient a DSN quotes (its status in front when the quoted
    text has none; a reply code from the status when it quotes none: the receiving side
    concluded it, not mailflow)."""
    found = _CODE.match(diagnostic)
    if found:
        text = diagnostic[4:].strip()
        return Reply(int(found.group(1)), text if re.match(r"^\d\.\d", text) else f"{status} {text}",
                     "RCPT")
    code = 550 if status.startswith("5") else 450
    return Reply(code, f"{status} {diagnostic}".strip(), "RCPT")
