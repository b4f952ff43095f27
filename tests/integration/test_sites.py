"""Sites: domains behind the same MX hosts travel together (one batch, one connection).

The first mail to each domain teaches the queue which site it shares (the MX lookup
writes it down); the next is claimed as one batch of several domains and goes out over
one session.  A domain with needs of its own (here a tls.ini rule naming it) and a domain
on other MX hosts go apart."""

from __future__ import annotations

from harness.waiting import until
from mailflow.queue.sites import UNKNOWN_FOR
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


def _setup(env):
    env.dns.set_zones(ZONES_HERE)
    env.inst.write_config("tls.ini", "[outbound]\nno_tls_hosts = alone.test\n")


env = module_env("sites", setup=_setup)


def _transmits(env) -> int:
    return sum(1 for line in env.logs().splitlines()
               if "Task mailflow.transmit[" in line and line.endswith("received"))


def _wave(env, after_ms: int) -> None:
    """One message to every domain, all due at the same moment ``after_ms`` from now."""
    now = now_ms()
    for domain in EVERY:
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
