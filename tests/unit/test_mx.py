"""MX resolution against the test DNS server (README, "MX lookup")."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from harness.dnsserver import NO_ANSWER, SERVFAIL
from mailflow.config.settings import Outbound
from mailflow.errors import PermanentError, TemporaryError
from mailflow.relay import answers
from mailflow.relay import mx as mxmod

ZONES = {
    "two.test": {"MX": [(20, "backup.two.test"), (10, "primary.two.test")]},
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (5, "first.equal.test")]},
    "primary.two.test": {"A": ["127.0.0.2"]},
    "backup.two.test": {"A": ["127.0.0.3"]},
    "implicit.test": {"A": ["127.0.0.4"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "broken.test": SERVFAIL,
    "silent.test": NO_ANSWER,
    "dual.test": {"MX": [(10, "dual.host.test")]},
    "dual.host.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "public.test": {"MX": [(10, "mx.public.test")]},
    "mx.public.test": {"A": ["11.22.33.44"]},
}


@pytest.fixture
def out(dns_server):
    dns_server.set_zones(ZONES)
    mxmod._resolvers.clear()

    def make(**kw):
        base = {"nameservers": (("127.0.0.1", dns_server.port),), "local_mx_ok": True}
        return Outbound(**{**base, **kw})
    return make


def test_preference_order(out):
    assert [m.exchange for m in mxmod.query_mx("two.test", out())] == ["primary.two.test",
                                                                        "backup.two.test"]


def test_equal_preferences_are_shuffled(out):
    seconds = Counter(mxmod.query_mx("equal.test", out())[1].exchange for _ in range(60))
    assert set(seconds) == {"a.equal.test", "b.equal.test"}
    assert all(mxmod.query_mx("equal.test", out())[0].exchange == "first.equal.test"
               for _ in range(10))


def test_implicit_mx(out):
    [m] = mxmod.query_mx("implicit.test", out())
    assert m.exchange == "implicit.test"
    assert [t.ip for t in mxmod.targets([m], out())] == ["127.0.0.4"]


@pytest.mark.parametrize("domain,cls,status", [
    ("nullmx.test", PermanentError, "5.1.10"), ("nowhere.test", PermanentError, "5.1.2"),
    ("broken.test", TemporaryError, "4.4.3")])
def test_failures(out, domain, cls, status):
    with pytest.raises(cls) as exc:
        mxmod.query_mx(domain, out())
    assert exc.value.reply.enhanced == status


def test_timeout_is_temporary(out):
    mxmod._resolvers.clear()
    res = mxmod.resolver(out())
    res.lifetime = res.timeout = 1.0
    with pytest.raises(TemporaryError) as exc:
        mxmod.query_mx("silent.test", out())
    assert exc.value.reply.enhanced == "4.4.3"


def test_answers_are_cached(out, dns_server):
    for _ in range(5):
        mxmod.query_mx("two.test", out())
    assert dns_server.queries.count(("two.test", "MX")) == 1


def test_ipv6_first_when_enabled(out):
    mxs = mxmod.query_mx("dual.test", out())
    assert [t.ip for t in mxmod.targets(mxs, out(ipv6_enabled=True))] == ["::1", "127.0.0.1"]
    assert [t.ip for t in mxmod.targets(mxs, out(ipv6_enabled=False))][0] == "127.0.0.1"


def test_local_addresses_of_dns_mx_hosts_are_skipped_unless_allowed(out):
    mxs = mxmod.query_mx("two.test", out())
    with pytest.raises(PermanentError) as exc:
        mxmod.targets(mxs, out(local_mx_ok=False))
    assert exc.value.reply.enhanced == "5.4.6"
    assert [t.ip for t in mxmod.targets(mxs, out(local_mx_ok=True))] == ["127.0.0.2", "127.0.0.3"]
    public = mxmod.query_mx("public.test", out())
    assert [t.ip for t in mxmod.targets(public, out(local_mx_ok=False))] == ["11.22.33.44"]


def test_get_mx_answers_are_never_local_checked(out):
    mxs = answers.mx_from_hook("127.0.0.2:2525", 25)
    assert [(t.ip, t.port) for t in mxmod.targets(mxs, out(local_mx_ok=False))] == [("127.0.0.2", 2525)]


def test_port_defaults_to_mx_port(out):
    [t] = mxmod.targets(mxmod.query_mx("implicit.test", out()), out(mx_port=2600))
    assert t.port == 2600


@pytest.mark.parametrize("answer,expected", [
    ("mx.example", [("mx.example", None)]),
    ("mx.example:2525", [("mx.example", 2525)]),
    ("127.0.0.2", [("127.0.0.2", None)]),
    ("127.0.0.2:2526", [("127.0.0.2", 2526)]),
    ("[::1]:2527", [("::1", 2527)]),
    ({"exchange": "127.0.0.3", "port": 26, "bind": "127.0.0.2", "bind_helo": "h.test",
      "using_lmtp": True, "auth_user": "u", "auth_pass": "p", "auth_type": "PLAIN"},
     [("127.0.0.3", 26)]),
    (SimpleNamespace(exchange="mx.obj.test", port=27, priority=5), [("mx.obj.test", 27)]),
    (["127.0.0.2:1", {"exchange": "127.0.0.3", "port": 2}], [("127.0.0.2", 1), ("127.0.0.3", 2)]),
])
def test_get_mx_answer_forms(answer, expected):
    mxs = answers.mx_from_hook(answer, 25)
    assert [(m.exchange, m.port if not isinstance(answer, str) or ":" in answer else None)
            for m in mxs] == expected
    assert all(not m.from_dns for m in mxs)


def test_dict_answer_keeps_every_field():
    [m] = answers.mx_from_hook({"exchange": "x.test", "bind": "127.0.0.2", "bind_helo": "h.test",
                              "using_lmtp": True, "auth_user": "u", "auth_pass": "p",
                              "auth_type": "cram-md5"}, 25)
    assert (m.bind, m.bind_helo, m.using_lmtp, m.auth_user, m.auth_pass, m.auth_type) == (
        "127.0.0.2", "h.test", True, "u", "p", "cram-md5")
