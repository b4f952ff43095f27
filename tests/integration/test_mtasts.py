"""MTA-STS (issue 15 item 2): the test DNS serves `_mta-sts` records, an HTTPS server with a
certificate from the test CA serves the policies on 127.0.0.5:443, and MX servers on
127.0.0.2/3 take (or must not take) the mail. Runs as root (CI does) for port 443."""

from __future__ import annotations

import email
import gzip
import json
import os
import ssl
import time
from typing import Any

import dkim
import dns.resolver
import pytest
import trustme

from harness.httpsserver import Answer, HTTPSServer
from tests.support.pipeline import ZONES, Env, make_env

POLICY_IP = "127.0.0.5"
MX_NAMES = [f"mx.{n}.test" for n in ("enf", "out", "bad", "tst", "plain", "restart", "rpt", "reports",
                                      "opt")] + \
           [f"mx.{kind}-{case}.test" for kind in ("n", "c")
            for case in ("down", "slow", "big", "type", "redirect")]


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\n" f"mode: {mode}\n" + "".join(f"mx: {m}\n" for m in mx) + \
        f"max_age: {max_age}\n"


def sts_zone(domain: str, mx_host: str, mx_ip: str, policy_id: str | None = "1") -> dict[str, Any]:
    zone: dict[str, Any] = {domain: {"MX": [(10, mx_host)]}, mx_host: {"A": [mx_ip]},
                            f"mta-sts.{domain}": {"A": [POLICY_IP]}}
    if policy_id is not None:
        zone[f"_mta-sts.{domain}"] = {"TXT": [f'"v=STSv1; id={policy_id}"']}
    return zone


@pytest.fixture(scope="module")
def world(tmp_path_factory, tls_ca: trustme.CA):
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("MTA-STS policies are served on port 443: run as root (CI does)")
    e, inst = make_env(tmp_path_factory.mktemp("mtasts"), None)
    e.dns.ttl = 0  # the tests change TXT ids: no resolver may keep the old one
    tls_ca.cert_pem.write_to_path(str(inst.config_dir / "ca.pem"))
    inst.write_config("tls.ini", "[outbound]\nca = ca.pem\n")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    names = [f"mta-sts.{m.removeprefix('mx.')}" for m in MX_NAMES] + ["rua.reports.test"]
    tls_ca.issue_cert(*names).configure_cert(ctx)
    https = HTTPSServer(POLICY_IP, 443, ctx).start()
    done = inst.mailflow("dkim", "keygen", "mailflow.test", "--selector", "r1", "--bits", "1024")
    assert done.returncode == 0, done.stderr
    [(name, rdata)] = [line.split(". IN TXT ") for line in done.stdout.decode().splitlines()
                       if " IN TXT " in line]
    e.zones = {**ZONES, name: {"TXT": [rdata]}}  # type: ignore[attr-defined]
    e.https = https  # type: ignore[attr-defined]
    e.configure()
    yield e
    https.stop()
    inst.stop_all()
    e.dns.stop()


@pytest.fixture
def env(world: Env) -> Env:
    return world


def serve(env: Env, domain: str, mx_ip: str = "127.0.0.2", policy_id: str | None = "1",
          answer: Answer | None = None) -> str:
    """Publish ``domain`` (MX mx.<domain> at ``mx_ip``) and its policy; the MX host name."""
    mx_host = f"mx.{domain}"
    env.zones.update(sts_zone(domain, mx_host, mx_ip, policy_id))  # type: ignore[attr-defined]
    env.dns.set_zones(env.zones)  # type: ignore[attr-defined]
    if answer is not None:
        env.https.routes[f"mta-sts.{domain}"] = answer  # type: ignore[attr-defined]
    return mx_host


@pytest.fixture
def mx_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(*MX_NAMES).configure_cert(ctx)
    return ctx


def reported(env: Env, domain: str) -> list[dict[str, Any]]:
    """The TLS-RPT results the worker noted for ``domain``."""
    out = []
    for path in (env.inst.root / ".mailflow" / "tlsrpt").glob("*.jsonl"):
        out += [r for r in map(json.loads, path.read_text().splitlines()) if r["d"] == domain]
    return out


def test_enforce_with_a_matching_mx_and_good_certificate_is_level_mta_sts(env, mx, mx_context):
    server = mx(tls_context=mx_context)
    serve(env, "enf.test", answer=Answer(policy("enforce", "mx.enf.test")))
    uuid = env.send("u@enf.test")
    seen = env.delivered_record(uuid)
    assert seen["tls_level"] == "mta-sts" and seen["secured"]
    assert server.sessions[-1].tls
    assert env.logged(f"delivered id={uuid}.1 domain=enf.test host=mx.enf.test")
    assert env.logged("tls=Y tlslevel=mta-sts")
    assert [r["r"] for r in reported(env, "enf.test")] == ["success"]
    assert len(env.https.requested("mta-sts.enf.test")) == 1
    again = env.send("u@enf.test")  # the cached policy: no second fetch
    assert env.delivered_record(again)["tls_level"] == "mta-sts"
    assert len(env.https.requested("mta-sts.enf.test")) == 1


def test_enforce_never_uses_an_mx_outside_the_policy(env, mx, mx_context):
    server = mx(tls_context=mx_context)
    serve(env, "out.test", answer=Answer(policy("enforce", "mx.elsewhere.test")))
    uuid = env.send("u@out.test")
    status = env.deferral(uuid)
    assert status["status"] == "4.7.5", status
    assert "matches its MTA-STS policy" in str(status)
    assert server.sessions == []  # not even connected to
    assert any(r["r"] == "validation-failure" for r in reported(env, "out.test"))


@pytest.mark.parametrize("case", ["untrusted", "no-starttls"])
def test_enforce_with_a_bad_certificate_or_no_tls_defers_and_sends_nothing(env, mx, case):
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx.bad.test").configure_cert(other)
    server = mx(host="127.0.0.3", tls_context=other if case == "untrusted" else None)
    serve(env, "bad.test", mx_ip="127.0.0.3", answer=Answer(policy("enforce", "mx.bad.test")))
    uuid = env.send("u@bad.test")
    status = env.deferral(uuid)
    assert status["status"] == "4.7.5", status  # never plaintext, whatever the reason
    assert server.deliveries == []  # nothing in plaintext
    assert all(s.deliveries == [] for s in server.sessions)
    results = {r["r"] for r in reported(env, "bad.test")}
    assert ("certificate-not-trusted" if case == "untrusted" else "starttls-not-supported") in results


def test_tls_required_no_lets_a_message_past_an_enforced_policy_that_fails(env, mx):
    """RFC 8689 5 (issue 29 item 4): with the header, the policy's failure does not stop the
    message (tls.ini's own policy still holds: opportunistic here); without it, it waits."""
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx.opt.test").configure_cert(other)
    server = mx(host="127.0.0.3", tls_context=other)
    serve(env, "opt.test", mx_ip="127.0.0.3", answer=Answer(policy("enforce", "mx.opt.test")))
    held = env.send("held@opt.test")
    free = env.send("free@opt.test", body="TLS-Required: No\nSubject: optional\n\nhello\n")
    env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == ["free@opt.test"]], 60)
    assert env.deferral(held)["status"] == "4.7.5"
    [seen] = [d for d in server.deliveries if d.rcpt_to == ["free@opt.test"]]
    assert b"TLS-Required: No" in seen.data  # the header goes on with the message
    assert not env.entries("pending", free)


def test_testing_mode_delivers_and_reports_the_failure(env, mx):
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx.tst.test").configure_cert(other)
    server = mx(host="127.0.0.3", tls_context=other)
    serve(env, "tst.test", mx_ip="127.0.0.3", answer=Answer(policy("testing", "mx.tst.test")))
    env.configure(enable_tls="true")
    uuid = env.send("u@tst.test")
    seen = env.delivered_record(uuid)
    assert seen["tls_level"] == "opportunistic"  # TLS without verification, as without a policy
    assert server.deliveries[-1].rcpt_to == ["u@tst.test"]
    [failure] = [r for r in reported(env, "tst.test") if r["r"] != "success"]
    assert failure["r"] == "certificate-not-trusted" and failure["t"] == "sts"
    assert "mode: testing" in failure["p"]


FAILURES = {
    "down": Answer("", status=503),
    "slow": Answer(policy("enforce", "x"), delay=15),
    "big": Answer("version: STSv1\nmode: enforce\nmax_age: 86400\n" + "mx: m.test\n" * 7000),
    "type": Answer(policy("enforce", "x"), content_type="text/html"),
    "redirect": Answer("", status=301, location="https://elsewhere.test/policy"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_policy_that_cannot_be_fetched_means_the_cached_one_or_opportunistic(env, mx, mx_context,
                                                                                 case):
    """No cached policy: as without MTA-STS (enable_tls is off here, so plaintext, `none`).
    A cached one: still applied when the TXT id changes and the new policy cannot be had."""
    server = mx(tls_context=mx_context)
    fresh = f"n-{case}.test"
    serve(env, fresh, answer=FAILURES[case])
    uuid = env.send(f"u@{fresh}")
    assert env.delivered_record(uuid)["tls_level"] == "none"
    kinds = {r["r"] for r in reported(env, fresh)}
    assert kinds & {"sts-policy-fetch-error", "sts-policy-invalid"}, kinds

    cached = f"c-{case}.test"
    mx_host = serve(env, cached, answer=Answer(policy("enforce", f"mx.{cached}")))
    assert env.delivered_record(env.send(f"u@{cached}"))["tls_level"] == "mta-sts"
    serve(env, cached, policy_id="2", answer=FAILURES[case])
    uuid = env.send(f"u@{cached}")
    assert env.delivered_record(uuid)["tls_level"] == "mta-sts"
    assert len(env.https.requested(f"mta-sts.{cached}")) == 2  # it did try the new one
    assert mx_host == f"mx.{cached}" and server.sessions


def test_a_restart_keeps_the_cached_policy(env, mx, mx_context):
    mx(tls_context=mx_context)
    serve(env, "restart.test", answer=Answer(policy("enforce", "mx.restart.test")))
    assert env.delivered_record(env.send("u@restart.test"))["tls_level"] == "mta-sts"
    cache = env.inst.root / ".mailflow" / "mta-sts" / "restart.test.json"
    assert json.loads(cache.read_text())["mode"] == "enforce"
    worker = env.inst.procs[0]
    worker.stop()
    env.inst.procs.remove(worker)
    serve(env, "restart.test", policy_id="9", answer=Answer("gone", status=404))
    env.inst.start_worker("deliver-again")
    uuid = env.send("u@restart.test")
    assert env.delivered_record(uuid)["tls_level"] == "mta-sts"  # from the disk: the fetch failed


def test_mta_sts_off_in_tls_ini_ignores_policies(env, mx, mx_context):
    mx(tls_context=mx_context)
    serve(env, "plain.test", answer=Answer(policy("enforce", "mx.plain.test")))
    env.inst.write_config("tls.ini", "[outbound]\nca = ca.pem\nmta_sts = false\n")
    try:
        env.configure()
        uuid = env.send("u@plain.test")
        assert env.delivered_record(uuid)["tls_level"] == "none"
        assert env.https.requested("mta-sts.plain.test") == []
    finally:
        env.inst.write_config("tls.ini", "[outbound]\nca = ca.pem\n")
        env.configure()


def test_a_finished_day_is_reported_by_mail_and_by_https_once(env, mx, mx_context):
    """TLS-RPT (issue 15 item 3): the day's results for rpt.test, after the day is over, as the
    RFC's gzipped JSON to both of its `rua`; the mail is DKIM-signed and is delivered although
    the reports domain's own MTA-STS policy (enforce, with an MX outside it) would refuse it."""
    server = mx(tls_context=mx_context)
    serve(env, "rpt.test", answer=Answer(policy("enforce", "mx.rpt.test")))
    serve(env, "reports.test", answer=Answer(policy("enforce", "mx.nowhere.test")))
    env.zones["_smtp._tls.rpt.test"] = {"TXT": [  # type: ignore[attr-defined]
        '"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://rua.reports.test/v1/tlsrpt"']}
    env.zones["rua.reports.test"] = {"A": [POLICY_IP]}  # type: ignore[attr-defined]
    env.dns.set_zones(env.zones)  # type: ignore[attr-defined]
    env.https.routes["rua.reports.test"] = Answer("thanks", status=202)  # type: ignore[attr-defined]
    for _ in range(3):
        assert env.delivered_record(env.send("u@rpt.test"))["tls_level"] in ("mta-sts", "verified")
    notes = env.inst.root / ".mailflow" / "tlsrpt"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    (notes / f"{today}.jsonl").rename(notes / f"{yesterday}.jsonl")  # the day is over

    reporter = env.inst.start_worker("reporter")  # a worker looks for finished days at start
    [post] = env.wait(lambda: env.https.requested("rua.reports.test", "POST"))  # type: ignore[attr-defined]
    assert post.headers["Content-Type"] == "application/tlsrpt+gzip"
    check_report(json.loads(gzip.decompress(post.body)), yesterday)

    [message] = env.wait(lambda: [d.data for d in server.deliveries if d.rcpt_to == ["tlsrpt@reports.test"]])
    parsed = email.message_from_bytes(message)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    assert parsed["TLS-Report-Domain"] == "rpt.test" and parsed["TLS-Report-Submitter"] == "mailflow.test"
    [attachment] = [p for p in parsed.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert attachment.get_filename().startswith("mailflow.test!rpt.test!")
    check_report(json.loads(gzip.decompress(attachment.get_payload(decode=True))), yesterday)
    tags = dkim_tags(message)
    assert tags[b"d"] == b"mailflow.test"
    assert {b"tls-report-domain", b"tls-report-submitter"} <= set(b"".join(tags[b"h"].split()).split(b":"))
    assert dkim.verify(message, dnsfunc=txt_lookup(env))

    env.wait(lambda: (notes / f"{yesterday}.sent").exists())  # the day is closed
    assert "TLS report for rpt.test" in reporter.output()
    reporter.stop()
    env.inst.procs.remove(reporter)
    again = env.inst.mailflow("tlsrpt", "send")
    assert again.returncode == 0 and b"0 TLS reports sent" in again.stdout, again.stdout + again.stderr
    assert len(env.https.requested("rua.reports.test", "POST")) == 1  # type: ignore[attr-defined]


def check_report(report: dict[str, Any], on_day: str) -> None:
    """RFC 8460 4.4's fields and types."""
    assert report["organization-name"] == "mailflow.test"
    assert report["date-range"] == {"start-datetime": f"{on_day}T00:00:00Z",
                                    "end-datetime": f"{on_day}T23:59:59Z"}
    assert report["contact-info"] and report["report-id"]
    [entry] = report["policies"]
    assert entry["policy"]["policy-type"] == "sts"
    assert entry["policy"]["policy-domain"] == "rpt.test"
    assert "mode: enforce" in entry["policy"]["policy-string"]
    assert entry["policy"]["mx-host"] == ["mx.rpt.test"]
    summary = entry["summary"]
    assert summary["total-successful-session-count"] >= 1
    assert summary["total-failure-session-count"] == 0
    assert "failure-details" not in entry


def dkim_tags(message: bytes) -> dict[bytes, bytes]:
    [value] = [v for k, v in dkim.DKIM(message).headers if k.lower() == b"dkim-signature"]
    return dkim.util.parse_tag_value(value)


def txt_lookup(env: Env):
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = ["127.0.0.1"], env.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(res.resolve(name.decode().rstrip("."), "TXT")[0].strings)
    return lookup
