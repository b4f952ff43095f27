"""Fair claiming: one destination's backlog never keeps another's mail waiting (issue 26).

A real worker on the embedded broker, an instance of its own per test (the backlogs it
leaves are not drained). No timing: what the receivers were sent, and in which order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import brokers
from harness.mxserver import MXServer
from tests.support.pipeline import PORT, Env, make_env, write_due


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    e, inst = make_env(tmp_path / "fair", None)
    yield e
    inst.stop_all()
    e.dns.stop()


@pytest.fixture
def mx_redis(tmp_path):
    """An instance on Redis (shaping's shared store) whose fill.test allows one connection,
    and the receiver, which holds each final reply a little (the connection is busy)."""
    e, inst = make_env(tmp_path / "fill", brokers.url_for("redis"),
                       files={"shaping.ini": "[domain:fill.test]\nmax_connections = 1\n"})
    server = MXServer("127.0.0.2", PORT, delay={"DOT": 0.05}).start()
    yield e, server
    server.stop()
    inst.stop_all()
    e.dns.stop()


def test_a_fresh_message_goes_out_behind_a_5000_message_backlog_that_cannot_move(env, mx):
    """The backlog's receiver holds its first reply: nothing of it can finish, so the window
    frees no room. The backlog still does not have all of it: a message for another domain,
    queued after, is claimed and delivered while the backlog has delivered nothing."""
    stuck = mx("127.0.0.2")
    reached, release = stuck.hold("DOT")
    quiet = mx("127.0.0.3")
    env.configure(pool_concurrency_max=1)  # one connection to each receiver: the first is held
    try:
        write_due(env.inst.queue_dir / "pending", 5000, "backlog.test", {"mx": f"127.0.0.2:{PORT}"})
        assert reached.wait(60), env.inst.dump_logs()[-4000:]  # the backlog is being delivered
        env.send("fresh@quiet.test", notes={"mx": f"127.0.0.3:{PORT}"})
        [delivery] = env.wait(lambda: quiet.deliveries, 30)
        assert delivery.rcpt_to == ["fresh@quiet.test"]
        assert stuck.deliveries == []  # the backlog's first message still waits for its reply
        in_flight = [p for p in env.inst.entries("active") if p.name.endswith("_backlog.test")]
        assert 0 < len(in_flight) <= 4000  # its share of the window: four fifths of 5,000
    finally:
        release.set()


def test_mail_arriving_one_by_one_for_a_busy_destination_fills_the_next_connection(tmp_path, mx_redis):
    """max_connections = 1: while the one connection is busy, new mail for the destination
    waits and then goes as one batch over the next connection, not a connection each."""
    env, server = mx_redis
    for n in range(100):  # each sent once the one before it was claimed: a batch of one each
        uuid = env.send(f"u{n}@fill.test", notes={"mx": f"127.0.0.2:{PORT}"})
        env.wait(lambda u=uuid: not env.due(u))
    server.wait_for(100, timeout=120)
    assert len(server.sessions) <= 10  # a few, not 100


def test_a_fresh_message_goes_out_while_a_5000_message_backlog_drains_at_a_throttled_rate(tmp_path, mx):
    """The backlog's domain may send 60 messages a minute (shaping.ini, on Redis): it drains
    slowly and stays due. A message for another domain, queued once the backlog is going
    out, is delivered while nearly all of the backlog still waits."""
    env, inst = make_env(tmp_path / "throttled", brokers.url_for("redis"),
                         files={"shaping.ini": "[domain:backlog.test]\nmessages_per_minute = 60\n"})
    try:
        slow, quiet = mx("127.0.0.2"), mx("127.0.0.3")
        write_due(inst.queue_dir / "pending", 5000, "backlog.test", {"mx": f"127.0.0.2:{PORT}"})
        env.wait(lambda: slow.deliveries, 60)  # the backlog is draining
        env.send("fresh@quiet.test", notes={"mx": f"127.0.0.3:{PORT}"})
        [delivery] = env.wait(lambda: quiet.deliveries, 30)
        assert delivery.rcpt_to == ["fresh@quiet.test"]
        assert len(slow.deliveries) <= 120  # two minutes' places at most: the rest waits
    finally:
        inst.stop_all()
        env.dns.stop()


def test_a_tenants_mail_goes_out_while_another_tenants_5000_backlog_to_the_same_domain_drains(
        tmp_path, mx):
    """One tenant may send 60 messages a minute (shaping.ini [tenant:], on Redis) and has 5,000
    queued for one domain; another tenant's message for that same domain, queued once the
    backlog is going out, is delivered while nearly all of the backlog still waits."""
    env, inst = make_env(tmp_path / "tenants", brokers.url_for("redis"),
                         files={"shaping.ini": "[tenant:bulk]\nmessages_per_minute = 60\n"})
    try:
        server = mx("127.0.0.2")
        write_due(inst.queue_dir / "pending", 5000, "shared.test",
                  {"mx": f"127.0.0.2:{PORT}", "tenant": "bulk"})
        env.wait(lambda: server.deliveries, 60)  # the backlog is draining
        env.send("fresh@shared.test", notes={"mx": f"127.0.0.2:{PORT}", "tenant": "app"})
        env.wait(lambda: any(d.rcpt_to == ["fresh@shared.test"] for d in server.deliveries), 30)
        assert len(server.deliveries) <= 121  # the backlog: two minutes' places at most
    finally:
        inst.stop_all()
        env.dns.stop()


def test_a_tenants_mail_goes_out_while_another_tenants_5000_backlog_to_a_slow_mx_drains(tmp_path, mx):
    """No rule this time: the receiver is slow (a fifth of a second each message) and one
    tenant has 5,000 queued for it, which fill every connection it may have. Another
    tenant's 20 messages for the same receiver, queued once the backlog is going out, are
    claimed in their own turn and take connections as they free: all delivered while
    nearly all of the backlog still waits."""
    # the worker as shipped: a thread for each connection concurrency_max allows (with fewer
    # threads than the receiver allows connections, the steps of the other tenant's mail
    # would wait in the broker's order behind the backlog's for a thread)
    env, inst = make_env(tmp_path / "slow", brokers.url_for("redis"), concurrency=None)
    try:
        server = mx("127.0.0.2", delay={"DOT": 0.2})
        route = {"mx": f"127.0.0.2:{PORT}"}
        write_due(inst.queue_dir / "pending", 5000, "shared.test", {**route, "tenant": "bulk"})
        env.wait(lambda: len(server.deliveries) >= 20, 60)  # the backlog is going out
        for n in range(20):
            env.send(f"app{n}@shared.test", notes={**route, "tenant": "app"})
        env.wait(lambda: sum(d.rcpt_to[0].startswith("app") for d in server.deliveries) == 20, 120)
        backlog = sum(d.rcpt_to[0].startswith("u") for d in server.deliveries)
        assert backlog <= 1000, backlog  # a fifth of it at most: the rest still waits
    finally:
        inst.stop_all()
        env.dns.stop()


def _received(env: Env, task: str) -> int:
    return sum(1 for line in env.logs().splitlines()
               if f"Task mailflow.{task}[" in line and line.endswith("received"))


def _ten_fed_into_a_sending_batch(env: Env, server: MXServer, domain: str) -> None:
    """One message to ``domain``, its final reply held; ten more while it is held (fed into
    its batch, not held back); then every one delivered, once, by one lookup and one transmit."""
    reached, release = server.hold("DOT")
    route = {"mx": f"127.0.0.2:{PORT}"}
    try:
        env.send(f"first@{domain}", notes=route)
        assert reached.wait(60), env.inst.dump_logs()[-4000:]  # the batch is sending
        later = [env.send(f"u{n}@{domain}", notes=route) for n in range(10)]
        env.wait(lambda: not any(env.due(u) for u in later))  # taken: fed, not held
    finally:
        release.set()
    server.wait_for(11)
    env.wait(lambda: not env.inst.all_files())
    assert sorted(d.rcpt_to[0] for d in server.deliveries) == sorted(
        [f"first@{domain}", *(f"u{n}@{domain}" for n in range(10))])  # each once
    assert (_received(env, "lookup_mx"), _received(env, "transmit")) == (1, 1)


def test_mail_for_a_destination_whose_batch_is_sending_joins_that_batch(env, mx):
    """While a batch's message waits for its reply, ten more for the same domain arrive:
    the queue manager feeds them into the batch in flight, which sends them over its own
    session once the first is done -- one lookup and one transmit for the eleven, where
    holding them until the batch ended made a second batch (a claim, three more tasks)."""
    server = mx("127.0.0.2")
    # one connection to it: the held reply makes the receiver look slow, and the batch's
    # extra lanes (its own, on more connections) are not what this is about
    env.configure(pool_concurrency_max=1)
    _ten_fed_into_a_sending_batch(env, server, "feed.test")
    assert len(server.sessions) == 1
    # the transmit's result says so (Flower's Result column), logged once its claim is finished
    env.wait(lambda: env.logged("'fed': 10"), 10)


def test_a_slow_receivers_fed_mail_is_shared_over_lanes_too(env, mx):
    """The batch in flight is a slow receiver's (its first reply held, every message 0.3 s):
    the ten messages fed into it while it sends go out over lanes of their own (looked for
    after each message), not one at a time over the first connection."""
    server = mx("127.0.0.2", delay={"DOT": 0.3})
    env.configure(pool_concurrency_max=4)
    _ten_fed_into_a_sending_batch(env, server, "fedslow.test")
    assert len(server.sessions) > 1  # the fed ones shared (at most 4 connections)
