"""A slow receiver's batch is shared over parallel connections; a fast one keeps one (issue 14).

A real worker on the embedded broker, at its default batch size (50); the entries
are written due a moment later so that the queue manager claims them as one batch.
"""

from __future__ import annotations

import time

from mailflow.relay.pool import STALE_IDLE
from tests.support.pipeline import PORT, module_env, write_due

env = module_env("lanes")


def lookups(env) -> int:
    return sum(1 for p in env.inst.procs for line in p.output().splitlines()
               if "Task mailflow.lookup_mx[" in line and line.endswith("received"))


def waiting(env, domain: str) -> list:
    return [p for p in env.inst.entries("pending") if p.name.endswith(f"_{domain}")]


def one_batch(env, domain: str, count: int = 40, host: str = "127.0.0.2") -> int:
    """Queue ``count`` messages to ``domain`` (its MX ``host``) as one batch; the lookups done
    before."""
    before = lookups(env)
    write_due(env.inst.queue_dir / "pending", count, domain, {"mx": f"{host}:{PORT}"}, after_ms=1500)
    return before


def test_a_slow_receiver_gets_its_batch_over_parallel_connections(env, mx):
    server = mx(delay={"DOT": 0.5})  # each message's final reply held half a second
    env.configure(pool_timeout=30, pool_concurrency_max=8)
    before = one_batch(env, "lanes.test")
    got = server.wait_for(40, timeout=60)
    assert sorted(r for d in got for r in d.rcpt_to) == sorted(f"u{n}@lanes.test" for n in range(40))
    assert 4 <= server.high_water <= 8  # spread, within the per-IP limit
    assert lookups(env) - before == 1  # one batch, one MX lookup
    env.wait(lambda: not [p for p in env.inst.entries("active") if p.name.endswith("_lanes.test")], 10)
    assert not waiting(env, "lanes.test")
    assert env.logged("slow receiver for lanes.test")
    # counted by the task, whose result is logged just after its claim is finished
    env.wait(lambda: "'delivered': 40" in "".join(p.output() for p in env.inst.procs), 10)


def test_a_fast_receiver_keeps_one_connection_for_its_batch(env, mx):
    # a receiver of its own: the others here are slow, and a worker remembers slow receivers
    server = mx("127.0.0.3")
    env.configure(pool_timeout=30, pool_concurrency_max=8)
    before = one_batch(env, "onelane.test", host="127.0.0.3")
    server.wait_for(40, timeout=60)
    assert lookups(env) - before == 1
    assert server.high_water == 1 and len(server.sessions) == 1


def test_lanes_stop_at_the_limit_and_a_deferral_still_comes_back_by_countdown(env, mx):
    """Two connections allowed: the batch goes over two; deferred messages, whichever lane
    met them, share the task's countdown."""
    server = mx(delay={"DOT": 0.3}, script={"DOT": ["451 4.3.0 later"] * 5})
    env.configure(pool_timeout=30, pool_concurrency_max=2, temp_fail_intervals="10m")
    one_batch(env, "twolanes.test", count=20)
    server.wait_for(15, timeout=60)  # the first five replies were 451s
    env.wait(lambda: len([p for p in waiting(env, "twolanes.test") if "_1_" in p.name]) == 5, 30)
    assert len(server.deliveries) == 15 and server.high_water == 2
    # the task arms once its lanes are done: one countdown for the five, whichever lane met them
    env.wait(lambda: env.logged("Deferred('5 deferred for 600 s: 451 4.3.0 later"), 30)
    armed = [p for p in (env.inst.queue_dir / "armed").iterdir() if not p.name.startswith(".")]
    assert len([a for a in armed if "twolanes.test" in a.read_text()]) == 1
    assert env.inst.mailflow("queue", "delete", "--domain", "twolanes.test").returncode == 0


def _sessions_with(server, domain: str) -> int:
    return len([s for s in server.sessions if any(d.rcpt_to[0].endswith(f"@{domain}") for d in s.deliveries)])


def test_a_slow_batch_takes_room_as_it_frees_not_only_at_its_start(env, mx):
    """Two connections allowed; another destination's message holds one. The batch starts on
    the other and finds no room for a lane; once the held message ends, the batch takes the
    freed connection for the rest of its messages."""
    server = mx(delay={"DOT": 0.3})
    env.configure(pool_timeout=30, pool_concurrency_max=2)
    reached, release = server.hold("DOT")
    try:
        one_batch(env, "holder.test", count=1)
        assert reached.wait(30), env.inst.dump_logs()[-4000:]
        one_batch(env, "climb.test", count=20)
        env.wait(lambda: env.logged("slow receiver for climb.test"), 30)  # and no room then
    finally:
        release.set()
    got = server.wait_for(21, timeout=60)
    assert sorted(r for d in got for r in d.rcpt_to if r.endswith("@climb.test")) == \
        sorted(f"u{n}@climb.test" for n in range(20))
    assert _sessions_with(server, "climb.test") == 2


def test_a_destination_known_slow_spreads_its_next_batch_from_the_first_message(env, mx):
    """While the next batch's first message waits for its reply, its others already go
    over lanes of their own -- the next batch of another domain on the same MX hosts
    too: slowness belongs to the receiver."""
    server = mx(delay={"DOT": 0.3})
    env.configure(pool_timeout=30, pool_concurrency_max=4)
    one_batch(env, "known.test", count=5)
    server.wait_for(5, timeout=60)
    env.wait(lambda: not [p for p in env.inst.entries("active") if p.name.endswith("_known.test")], 30)
    reached, release = server.hold("DOT")
    try:
        one_batch(env, "sibling.test", count=8)
        assert reached.wait(30), env.inst.dump_logs()[-4000:]
        server.wait_for(5 + 7, timeout=60)  # all but the held one, while it is held
    finally:
        release.set()
    server.wait_for(5 + 8, timeout=60)


def test_a_slow_batchs_lanes_take_the_slots_of_connections_idle_elsewhere(env, mx):
    """Three connections in all. A slow receiver's batch leaves three connections idle (kept
    for ``pool_timeout``); once they have been unused a while, another slow receiver's batch
    spreads over the slots they hold -- its extra lanes close them -- rather than going over
    the one connection its first lane made room for while they sit unused."""
    done = mx("127.0.0.4", delay={"DOT": 0.3})
    env.configure(pool_timeout=60, concurrency_max=3, pool_concurrency_max=3)
    one_batch(env, "finished.test", count=9, host="127.0.0.4")
    done.wait_for(9, timeout=60)
    assert done.high_water == 3
    env.wait(lambda: not [p for p in env.inst.entries("active") if p.name.endswith("_finished.test")], 30)
    time.sleep(STALE_IDLE + 0.5)  # idle past the age at which a lane may close them
    server = mx("127.0.0.5", delay={"DOT": 0.3})
    one_batch(env, "backlog.test", count=20, host="127.0.0.5")
    got = server.wait_for(20, timeout=60)
    assert sorted(r for d in got for r in d.rcpt_to) == sorted(f"u{n}@backlog.test" for n in range(20))
    assert server.high_water >= 2  # one lane at least beyond the first
