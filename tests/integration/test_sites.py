"""Sites: domains behind the same MX hosts travel together (one batch, one connection).

The first mail to each domain teaches the queue which site it shares (the MX lookup
writes it down); the next is claimed as one batch of several domains and goes out over
one session.  A domain with needs of its own (here a tls.ini rule naming it) and a domain
on other MX hosts go apart.  Domains under one shaping ``[mx:SUFFIX]`` rule are one site
whatever their MX sets."""

from __future__ import annotations

from harness.waiting import until
from mailflow.queue.sites import UNKNOWN_FOR, suffix_key
from mailflow.queue.spool import now_ms
from tests.support.pipeline import ZONES, module_env, write_due

SITE_DOMAINS = [f"d{n}.site.test" for n in range(20)]
ZONES_HERE = {
    **ZONES,
    # equal preferences: DNS gives them in any order, and the site is the same
    **{d: {"MX": [(10, "a.site.test"), (10, "b.site.test")]} for d in [*SITE_DOMAINS, "alone.test"]},
    "a.site.test": {"A": ["127.0.0.2"]},
    "b.site.test": {"A": ["127.0.0.2"]},
    "other.test": {"MX": [(10, "mx.dest.test")]},
}
EVERY = [*SITE_DOMAINS, "alone.test", "other.test"]
# never seen before the test that sends to them: the long tail, one message each
NEWCOMERS = [f"n{n}.site.test" for n in range(12)]
ZONES_HERE.update({d: {"MX": [(10, "a.site.test"), (10, "b.site.test")]} for d in NEWCOMERS})
# more of the long tail, arriving together
TAIL = [f"t{n}.site.test" for n in range(15)]
ZONES_HERE.update({d: {"MX": [(10, "a.site.test"), (10, "b.site.test")]} for d in TAIL})
# one provider, two MX sets (as Gmail's domains have): the shaping rule makes them one site
PROVIDER_A = [f"a{n}.provider.test" for n in range(6)]
PROVIDER_B = [f"b{n}.provider.test" for n in range(6)]
ZONES_HERE.update({
    **{d: {"MX": [(1, "in1.prov.test")]} for d in PROVIDER_A},
    **{d: {"MX": [(5, "in1.prov.test"), (10, "in2.prov.test")]} for d in PROVIDER_B},
    "in1.prov.test": {"A": ["127.0.0.2"]},
    "in2.prov.test": {"A": ["127.0.0.2"]},
})
SHAPING = "[mx:.prov.test]\nmax_connections = 50\n"
# first seen together, each behind hosts of its own: one claim of newcomers, four routes
APART = [f"apart{n}.test" for n in range(4)]
ZONES_HERE.update({
    **{d: {"MX": [(10, f"mx.{d}")]} for d in APART},
    **{f"mx.{d}": {"A": [f"127.0.0.{3 + n}"]} for n, d in enumerate(APART)},
})


def _setup(env):
    env.dns.set_zones(ZONES_HERE)
    env.inst.write_config("tls.ini", "[outbound]\nno_tls_hosts = alone.test\n")


env = module_env("sites", setup=_setup, files={"shaping.ini": SHAPING})


def _received(env, task: str) -> int:
    return sum(1 for line in env.logs().splitlines()
               if f"Task mailflow.{task}[" in line and line.endswith("received"))


def _transmits(env) -> int:
    return _received(env, "transmit")


def _wave(env, after_ms: int, domains: list[str] = EVERY) -> None:
    """One message to each domain, all due at the same moment ``after_ms`` from now."""
    now = now_ms()
    for domain in domains:
        write_due(env.inst.queue_dir / "pending", 1, domain, {}, after_ms=after_ms, now=now)


def _all_gone(env) -> bool:
    return not env.inst.all_files()


def test_domains_behind_the_same_mx_hosts_share_one_batch_and_one_session(env, mx):
    server = mx()
    # one connection per address: the batch keeps its session, no lane can open another
    env.configure(pool_concurrency_max=1)
    _wave(env, after_ms=0)  # the lookups learn each domain's site
    env.wait(lambda: len(server.deliveries) >= len(EVERY) and _all_gone(env), timeout=60)
    learned = env.inst.queue_dir / "sites"
    until(lambda: all((learned / d).exists() for d in EVERY), 30)
    assert (learned / "alone.test").read_text() == ""  # needs of its own: travels alone
    assert len({(learned / d).read_text() for d in SITE_DOMAINS}) == 1
    assert (learned / "other.test").read_text() not in ("", (learned / SITE_DOMAINS[0]).read_text())

    before, delivered = _transmits(env), len(server.deliveries)
    # due once the queue manager's look at these domains (site unknown then) has lapsed
    _wave(env, after_ms=int(UNKNOWN_FOR * 1000) + 1500)
    env.wait(lambda: len(server.deliveries) >= delivered + len(EVERY) and _all_gone(env), timeout=60)

    wave = {id(d) for d in server.deliveries[delivered:] if d.rcpt_to[0].endswith(".site.test")}
    assert len(wave) == len(SITE_DOMAINS)
    carried = [s for s in server.sessions if any(id(d) in wave for d in s.deliveries)]
    assert len(carried) == 1, carried  # twenty domains, one connection
    # the site's batch, alone.test's and other.test's: three transmits, not twenty-two
    assert _transmits(env) - before == 3


def test_domains_under_one_mx_rule_are_one_site_whatever_their_mx_sets(env, mx):
    server = mx()
    env.configure(pool_concurrency_max=1)
    provider = [*PROVIDER_A, *PROVIDER_B]
    _wave(env, after_ms=0, domains=provider)
    env.wait(lambda: len(server.deliveries) >= len(provider) and _all_gone(env), timeout=60)
    learned = env.inst.queue_dir / "sites"
    until(lambda: all((learned / d).exists() for d in provider), 30)
    assert {(learned / d).read_text() for d in provider} == {suffix_key("mx:.prov.test")}

    before = {task: _received(env, task) for task in ("lookup_mx", "transmit")}
    delivered = len(server.deliveries)
    _wave(env, after_ms=int(UNKNOWN_FOR * 1000) + 1500, domains=provider)
    env.wait(lambda: len(server.deliveries) >= delivered + len(provider) and _all_gone(env), timeout=60)
    # one claim and one lookup for the twelve domains (two without the rule: one per MX set);
    # each MX set still its own route, every message sent to its own domain's hosts
    assert _received(env, "lookup_mx") - before["lookup_mx"] == 1
    assert _received(env, "transmit") - before["transmit"] == 2


def test_first_seen_domains_behind_a_known_site_join_its_batch(env, mx):
    """A long tail of domains seen for the first time, one message each, behind the same MX
    hosts: each lookup writes its domain's site down, and once the site has another domain
    the message goes back to be claimed with the site's mail -- a few batches for the lot,
    not one batch, three tasks and a connection's turn per domain.  Each arrives once,
    and going back is no failure."""
    server = mx()
    env.configure(pool_concurrency_max=1)
    before, delivered = _transmits(env), len(server.deliveries)
    _wave(env, after_ms=0, domains=NEWCOMERS)
    env.wait(lambda: len(server.deliveries) >= delivered + len(NEWCOMERS) and _all_gone(env), timeout=60)
    got = sorted(d.rcpt_to[0].split("@")[1] for d in server.deliveries[delivered:])
    assert got == sorted(NEWCOMERS)  # each once
    # at most one went alone (the first placed at the site); the others joined: one batch,
    # or a few as they came back while one was in flight -- twelve without joining
    assert _transmits(env) - before <= 4
    assert not env.logged("fails=1")


def test_a_long_tail_of_first_seen_domains_costs_a_lookup_or_two_not_one_each(env, mx):
    """Fifteen domains never seen before, a message each, due together: the queue manager
    claims them as one batch of newcomers, whose one lookup writes all their sites down
    and sends them on together (or back to their site's next batch) -- where a batch, a
    lookup and three tasks each made fifteen.  Each arrives once, and no entry fails."""
    server = mx()
    env.configure(pool_concurrency_max=1)
    lookups, transmits, delivered = _received(env, "lookup_mx"), _transmits(env), len(server.deliveries)
    _wave(env, after_ms=0, domains=TAIL)
    env.wait(lambda: len(server.deliveries) >= delivered + len(TAIL) and _all_gone(env), timeout=60)
    got = sorted(d.rcpt_to[0].split("@")[1] for d in server.deliveries[delivered:])
    assert got == sorted(TAIL)  # each once
    assert _received(env, "lookup_mx") - lookups <= 3
    assert _transmits(env) - transmits <= 2
    learned = env.inst.queue_dir / "sites"
    assert len({(learned / d).read_text() for d in TAIL}) == 1
    assert not env.logged("fails=1")


def test_the_routes_of_one_claim_send_at_the_same_time(env, mx):
    """Newcomers claimed together whose lookup finds each behind hosts of its own make a
    route each; every route is claimed apart and sends while the others do.  Sharing the
    claim, each route's steps waited for the one before to end (a worker thread each,
    waiting), and a claim of fifty routes held the worker's threads: here the second MX
    would see nothing while the first holds its reply."""
    servers = [mx(f"127.0.0.{3 + n}") for n in range(len(APART))]
    gates = [server.hold("DOT") for server in servers]
    lookups = _received(env, "lookup_mx")
    _wave(env, after_ms=1000, domains=APART)  # due together, once all are written
    try:
        for n, (reached, _release) in enumerate(gates):
            assert reached.wait(30), f"{APART[n]} never reached its dot while the others held theirs"
    finally:
        for _reached, release in gates:
            release.set()
    env.wait(lambda: all(server.deliveries for server in servers) and _all_gone(env), timeout=60)
    assert [len(server.deliveries) for server in servers] == [1] * len(APART)
    assert _received(env, "lookup_mx") - lookups <= 2  # claimed together, routed apart
