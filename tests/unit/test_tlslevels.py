"""TLS levels and what decides them (issue 15 items 2, 4, 5): policy parsing and MX matching,
DANE before MTA-STS, and a pool that never lends a weaker session to a stronger need."""

from __future__ import annotations

import ssl
import time

import pytest
import trustme

from harness.mxserver import MXServer
from mailflow.config.settings import Outbound, Tls
from mailflow.relay import mtasts, tlsrpt
from mailflow.relay.dane import Dane, Tlsa
from mailflow.relay.mx import MX, Target
from mailflow.relay.pool import Pool
from mailflow.relay.security import RouteSecurity
from mailflow.relay.tlsneed import TlsNeed
from mailflow.reports import tls as tls_reports

POLICY = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 86400\n"


def test_a_policy_is_parsed_and_matches_exact_names_and_one_wildcard_label():
    p = mtasts.parse("example.com", "20261201", POLICY, time.time())
    assert (p.mode, p.mx, p.max_age) == ("enforce", ("mail.example.com", "*.example.net"), 86400)
    assert p.allows("mail.example.com") and p.allows("MAIL.example.com.")
    assert p.allows("mx1.example.net")
    assert not p.allows("a.b.example.net")  # 8461 4.1: the wildcard is one label
    assert not p.allows("example.net") and not p.allows("evil-mail.example.com")


@pytest.mark.parametrize("text,fragment", [
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n", "max_age"),
    ("version: STSv1\nmode enforce\n", "without ':'"),
])
def test_a_malformed_policy_is_sts_policy_invalid(text, fragment):
    with pytest.raises(mtasts.PolicyError) as caught:
        mtasts.parse("example.com", "1", text, time.time())
    assert caught.value.kind == "sts-policy-invalid" and fragment in str(caught.value)


def test_the_cache_survives_a_new_process(tmp_path):
    policy = mtasts.parse("example.com", "7", POLICY, 1000.0)
    mtasts.Cache(tmp_path).put(policy)
    again = mtasts.Cache(tmp_path).get("example.com")  # a new cache: read from the disk
    assert again == policy
    assert not again.expired(1000.0 + 86399) and again.expired(1000.0 + 86400)


def target(host: str = "mail.example.com", from_dns: bool = True) -> Target:
    return Target(mx=MX(exchange=host, from_dns=from_dns), ip="192.0.2.1", port=25)


def test_dane_wins_over_mta_sts_for_the_same_mx_and_neither_applies_to_get_mx_answers():
    sts = mtasts.parse("example.com", "1", POLICY, time.time())
    records = (Tlsa(3, 1, 1, b"\x00" * 32),)
    security = RouteSecurity(domain="example.com", tls=Tls(), settings=Outbound(), sts=sts,
                             dane={"mail.example.com": Dane("mail.example.com", records)})
    need = security.need(target())
    assert need.level == "dane" and need.must and need.dane is not None
    assert security.need(target("other.example.net")).level == "mta-sts"
    smarthost = security.need(target("mail.example.com", from_dns=False))
    assert smarthost.level == "none" and not smarthost.must


def test_enforce_leaves_out_mx_hosts_outside_the_policy():
    sts = mtasts.parse("example.com", "1", POLICY, time.time())
    security = RouteSecurity(domain="example.com", tls=Tls(), settings=Outbound(), sts=sts)
    kept = security.allowed([target("evil.example.org"), target("mail.example.com")])
    assert [t.mx.exchange for t in kept] == ["mail.example.com"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.level.test").configure_cert(ctx)
    with MXServer("127.0.0.2", 0, tls_context=ctx) as server:
        yield server


def need_at(level: str) -> TlsNeed:
    if level == "opportunistic":
        return TlsNeed(want=True, must=False, verify=False, name="mx.level.test")
    return TlsNeed(want=True, must=True, verify=True, name="mx.level.test", level=level)


@pytest.mark.parametrize("first,second,reused", [
    ("opportunistic", "verified", False),
    ("opportunistic", "mta-sts", False),
    ("verified", "mta-sts", False),
    ("mta-sts", "verified", True),
    ("mta-sts", "opportunistic", True),
    ("verified", "opportunistic", True),
])
def test_the_pool_never_lends_a_session_opened_at_a_weaker_level(tmp_path, ca, tls_server, first,
                                                                    second, reused):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = Tls(ca=str(tmp_path / "ca.pem"))
    settings = Outbound(pool_timeout=50, enable_tls=True)
    where = [Target(mx=MX(exchange="mx.level.test", from_dns=False), ip="127.0.0.2",
                    port=tls_server.port)]
    pool = Pool()

    def acquire(level: str):
        return pool.acquire(where, helo="test.example", bind=None, settings=settings, tls=tls,
                            domain="level.test", need_for=lambda t: need_at(level))

    one = acquire(first)
    assert one.level == ("verified" if first == "verified" else first)
    pool.release(one, settings)
    two = acquire(second)
    assert (two is one) is reused
    if not reused:
        assert two.level == second
        assert len(tls_server.sessions) == 2
    pool.discard(two)
    if two is not one:
        pool.discard(one)
    pool.stop()


def test_a_days_notes_become_one_report_per_policy_domain(tmp_path, monkeypatch):
    """RFC 8460 4.4: sessions summed per policy, failures detailed by result, MX and IP."""
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(tmp_path))
    sts = tlsrpt.PolicyRef("example.com", "sts", ("version: STSv1", "mode: testing",
                                                  "mx: mail.example.com", "max_age: 86400"))
    tlsa = tlsrpt.PolicyRef("example.org", "tlsa", ("3 1 1 00ff",))
    for _ in range(3):
        tlsrpt.note(sts, "mail.example.com", "192.0.2.1", tlsrpt.SUCCESS)
    tlsrpt.note(sts, "mail.example.com", "192.0.2.1", "certificate-not-trusted", "self-signed")
    tlsrpt.note(sts, "mail.example.com", "192.0.2.1", "certificate-not-trusted", "self-signed")
    tlsrpt.note(tlsa, "mx.example.org", "192.0.2.2", "validation-failure", "no TLSA record matches")
    [path] = (tmp_path / "tlsrpt").glob("*.jsonl")
    path.write_text(path.read_text() + '{"d": "torn')  # a crash mid-line loses only that line
    reports = tls_reports.summarise(path)
    [com] = reports["example.com"]
    assert com["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 2}
    assert com["policy"]["mx-host"] == ["mail.example.com"]
    assert com["failure-details"] == [{"result-type": "certificate-not-trusted",
                                       "receiving-mx-hostname": "mail.example.com",
                                       "receiving-ip": "192.0.2.1", "failed-session-count": 2,
                                       "additional-information": "self-signed"}]
    [org] = reports["example.org"]
    assert org["policy"]["policy-type"] == "tlsa" and org["policy"]["mx-host"] == ["mx.example.org"]
    assert org["summary"]["total-failure-session-count"] == 1
    name = tls_reports.filename("mx.example.net", "example.com", "2026-11-30", "abc@mx.example.net")
    assert name == "mx.example.net!example.com!1795996800!1796083199!abc.json.gz"
