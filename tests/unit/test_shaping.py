"""shaping.ini rules and the limiter's decisions, on this host's files and on real Redis."""

from __future__ import annotations

import time

import pytest

from harness import brokers
from mailflow.config.files import ConfigError
from mailflow.config.shaping import load
from mailflow.relay import shaping
from mailflow.relay.shaping import LocalBackend, RedisBackend


def rules(tmp_path, text):
    path = tmp_path / "shaping.ini"
    path.write_text(text)
    return load(path)


def test_rules_match_by_domain_mx_suffix_and_source(tmp_path):
    domain, mx, source = rules(tmp_path, "[main]\n[domain:Example.com]\nmax_connections = 2\n"
                                         "[mx:.google.com]\nmessages_per_minute = 60\n"
                                         "[source:192.0.2.7]\nmessages_per_hour = 100\n")
    assert domain.matches("example.com", "mx.other.net", None)
    assert mx.matches("gmail.com", "aspmx.l.google.com", None)
    assert mx.matches("any.test", "google.com", None) and not mx.matches("x.test", "notgoogle.com", None)
    assert source.matches("x.test", "mx.x.test", "192.0.2.7") and not source.matches("x", "y", None)


@pytest.mark.parametrize("text,line,fragment", [
    ("[domain:a.test]\nmax_connections = 0\n", 2, "max_connections must be a positive integer"),
    ("[domain:a.test]\nmax_conns = 2\n", 2, "unknown key 'max_conns'"),
    ("; x\n[gmail]\nmax_connections = 2\n", 2, "a rule is [domain:NAME], [mx:SUFFIX], "
     "[source:IP or NAME] or [tenant:NAME]"),
    ("[source:not-an-ip]\nmax_connections = 2\n", 1, "is neither an IP address nor an egress.ini source"),
    ("[tenant:a/b]\nmax_connections = 2\n", 1, "is not a tenant's name"),
    ("[domain:a.test]\nsuspend_on = 4.7.28\nsuspend_for = soon\n", 3, "suspend_for"),
    ("[domain:a.test]\n", 1, "sets no limit"),
])
def test_a_malformed_rule_is_file_line(tmp_path, text, line, fragment):
    with pytest.raises(ConfigError) as caught:
        rules(tmp_path, text)
    assert f"shaping.ini:{line}: " in str(caught.value) and fragment in str(caught.value)


@pytest.fixture(params=["local", "redis"])
def backend(request, tmp_path):
    if request.param == "local":
        return LocalBackend(tmp_path / "shaping")
    url = brokers.url_for("redis")
    found = RedisBackend(url)
    found.client.flushdb()
    return found


def test_connections_leases_and_their_release(tmp_path, backend):
    [rule] = rules(tmp_path, "[domain:a.test]\nmax_connections = 2\n")
    now = 1_000_000
    assert backend.lease([rule], "one", now) == 0
    assert backend.lease([rule], "two", now) == 0
    assert backend.lease([rule], "three", now) == shaping.FULL_WAIT  # the third waits
    assert backend.lease([rule], "one", now + 1000) == 0  # a renewal of a held lease
    backend.release([rule], "two")
    assert backend.lease([rule], "three", now + 2000) == 0
    # a dead host's leases lapse
    assert backend.lease([rule], "four", now + 2000 + int(shaping.LEASE_TTL * 1000) + 1) == 0


def test_a_sliding_minute_and_a_suspension(tmp_path, backend):
    [rule] = rules(tmp_path, "[domain:a.test]\nmessages_per_minute = 3\nsuspend_on = 4.7.28\n"
                             "suspend_for = 30s\n")
    # the real clock: Redis keeps a suspension for its real time left (until - now), so a
    # made-up start in 1970 left it 1 ms, and the test failed whenever the next call was later
    start = int(time.time() * 1000)
    credit = int(shaping.CREDIT_TTL * 1000)
    assert [backend.take([rule], start + i) for i in range(3)] == [(1, 0), (1, 0), (1, 0)]
    granted, wait = backend.take([rule], start + 10_000)
    # the first of the three leaves the window 60 s after it could last have been used
    assert granted == 0 and wait == pytest.approx(50.001 + shaping.CREDIT_TTL)
    assert backend.take([rule], start + 60_000 + credit + 1) == (1, 0)
    backend.suspend(rule, start + 100_000)
    assert backend.take([rule], start + 90_000) == (0, pytest.approx(10.0))
    assert backend.suspended(rule, start + 90_000) == pytest.approx(10.0)


def test_places_are_taken_for_several_messages_but_never_beyond_the_limit(tmp_path, backend):
    [rule] = rules(tmp_path, "[domain:a.test]\nmessages_per_minute = 10\nmessages_per_hour = 12\n")
    start = 7_000_000
    assert backend.take([rule], start, 4) == (4, 0)
    assert backend.take([rule], start + 1, 50) == (6, 0)  # what is left of the minute
    granted, wait = backend.take([rule], start + 2, 50)
    assert granted == 0 and wait > 59
    after = start + 60_000 + int(shaping.CREDIT_TTL * 1000) + 2
    assert backend.take([rule], after, 0) == (0, 0)  # a look (the queue manager's): room, none taken
    assert backend.take([rule], after, 50) == (2, 0)  # the minute is free; the hour has 2 left
    granted, wait = backend.take([rule], after, 0)
    assert granted == 0 and wait > 3500  # a look at a full hour: the wait


def test_reply_matching_for_suspend_on(tmp_path):
    [rule] = rules(tmp_path, "[mx:google.com]\nsuspend_on = 4.7.28, too many connections\n")
    assert rule.suspends_on("421 4.7.28 [192.0.2.7] Our system has detected an unusual rate")
    assert rule.suspends_on("421 Too Many Connections from your IP")
    assert not rule.suspends_on("450 4.2.1 mailbox busy")


def test_redis_not_answering_falls_back_to_this_host_logs_once_and_counts(tmp_path, monkeypatch, caplog):
    """Limits still hold (on this host's files) while the shared Redis is down; the fallback
    is logged once a minute at most and counted for the metrics."""
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(tmp_path / "state"))
    [rule] = rules(tmp_path, "[domain:a.test]\nmessages_per_minute = 2\n")
    shaper = shaping.Shaper("redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert shaper.take([rule], 5) == (2, 0)  # decided on this host: only the minute's 2
    granted, wait = shaper.take([rule], 1)
    assert granted == 0 and wait > 59
    assert shaper.fallbacks == 2
    assert caplog.text.count("Redis not answering") == 1


def test_tenant_rules_match_the_tenants_mail_and_source_rules_name_an_egress_source(tmp_path):
    path = tmp_path / "shaping.ini"
    path.write_text("[tenant:acme]\nmessages_per_hour = 100\n\n[source:mta1]\nmax_connections = 3\n")
    tenant, source = load(path, {"mta1": "192.0.2.10"})
    assert tenant.matches("any.example", "mx.any.example", None, "acme")
    assert not tenant.matches("any.example", "mx.any.example", None, "globex")
    assert not tenant.matches("any.example", "mx.any.example", None, None)
    assert source.name == "source:mta1" and source.matches("d.example", "mx.d.example", "192.0.2.10")


def test_an_mx_rule_counts_per_source_address_when_the_connection_has_one(tmp_path):
    from mailflow.relay.shaping import rules_for
    path = tmp_path / "shaping.ini"
    path.write_text("[mx:.google.com]\nmax_connections = 10\n\n[domain:d.example]\nmax_connections = 2\n")
    rules = load(path)
    with_source = rules_for(rules, "d.example", "aspmx.l.google.com", "192.0.2.10")
    assert [r.name for r in with_source] == ["mx:.google.com@192.0.2.10", "domain:d.example"]
    other = rules_for(rules, "d.example", "aspmx.l.google.com", "192.0.2.11")
    assert other[0].name != with_source[0].name  # each source its own count at the provider
    assert [r.name for r in rules_for(rules, "d.example", "aspmx.l.google.com", None)] == [
        "mx:.google.com", "domain:d.example"]
