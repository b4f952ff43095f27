"""Egress sources and pools: each connection binds its source's address and greets with its
name, sources of a pool take connections in their weights' proportion, a tenant's pool wins
over the default, and a source address this host does not have stops the worker's start."""

from __future__ import annotations

import json
from collections import Counter

from harness.instance import Instance
from harness.waiting import until
from tests.support.pipeline import Env, module_env, write_due

EGRESS = """[main]
default_pool = main

[source:mta1]
address = 127.0.0.4
ehlo = mta1.sender.test

[source:mta2]
address = 127.0.0.5
ehlo = mta2.sender.test

[source:mta3]
address = 127.0.0.6
ehlo = mta3.sender.test

[source:mta4]
address = 127.0.0.7
ehlo = mta4.sender.test
warmup = 20, 40

[source:mta5]
address = 127.0.0.8
ehlo = mta5.sender.test

[source:mta6]
address = 127.0.0.10
ehlo = mta6.sender.test
warmup = 10

[source:mta7]
address = 127.0.0.11
ehlo = mta7.sender.test

[pool:main]
sources = mta1:3, mta2:1

[pool:warm]
sources = mta4:100, mta5:1

[pool:bulk]
sources = mta3

[pool:warm2]
sources = mta6:100, mta7:1
"""
TENANTS = "[tenant:bulkco]\npool = bulk\n\n[tenant:warmco]\npool = warm\n\n[tenant:warm2co]\npool = warm2\n"

ROUTES = "[implicit.test]\npool = bulk\n"  # the pool only: the mail still goes by DNS

env = module_env("egress", files={"egress.ini": EGRESS, "tenants.ini": TENANTS, "routes.ini": ROUTES})


def _sessions_by_peer(server) -> list[tuple[str, str | None]]:
    return [(s.peer[0], s.ehlo) for s in server.sessions if s.deliveries]


def test_a_pools_sources_take_connections_by_weight_each_with_its_own_name(env: Env, mx):
    server = mx()
    env.configure(pool_timeout=0)  # a connection per message: sessions count the choices
    write_due(env.inst.queue_dir / "pending", 80, "dest.test", {})
    until(lambda: len(server.deliveries) >= 80 and not env.inst.all_files(), 90)
    seen = _sessions_by_peer(server)
    by_peer = Counter(peer for peer, _ in seen)
    assert set(by_peer) == {"127.0.0.4", "127.0.0.5"}, by_peer
    assert 0.65 <= by_peer["127.0.0.4"] / sum(by_peer.values()) <= 0.85  # 3:1, within 10 %
    assert {(peer, ehlo) for peer, ehlo in seen} == {("127.0.0.4", "mta1.sender.test"),
                                                     ("127.0.0.5", "mta2.sender.test")}
    assert env.logged("source=mta1") and env.logged("source=mta2")


def test_a_tenants_pool_wins_over_the_default(env: Env, mx):
    server = mx()
    write_due(env.inst.queue_dir / "pending", 3, "sender.test", {"tenant": "bulkco"})
    until(lambda: len(server.deliveries) >= 3 and not env.inst.all_files(), 60)
    assert {peer for peer, _ in _sessions_by_peer(server)} == {"127.0.0.6"}
    assert env.logged("source=mta3") and env.logged("tenant=bulkco")


def test_a_routes_pool_without_via_picks_the_source_and_dns_the_way(env: Env, mx):
    server = mx()
    write_due(env.inst.queue_dir / "pending", 3, "implicit.test", {})
    until(lambda: len(server.deliveries) >= 3 and not env.inst.all_files(), 60)
    assert {peer for peer, _ in _sessions_by_peer(server)} == {"127.0.0.6"}  # mta3, not main's
    assert env.logged("source=mta3") and env.logged("host=implicit.test")  # its implicit MX


def test_a_warm_up_cap_moves_the_next_message_to_the_pools_other_source(env: Env, mx):
    server = mx()
    env.configure(pool_timeout=0)
    write_due(env.inst.queue_dir / "pending", 30, "dest.test", {"tenant": "warmco"})
    until(lambda: len(server.deliveries) >= 30 and not env.inst.all_files(), 90)
    by_peer = Counter(peer for peer, _ in _sessions_by_peer(server))
    assert by_peer == {"127.0.0.7": 20, "127.0.0.8": 10}  # 100:1 by weight, but mta4 has 20 today
    stats = json.loads(env.inst.mailflow("queue", "stats", "--json").stdout)
    assert stats["warmup:mta4:day"] == 1 and stats["warmup:mta4:left"] == 0


def test_a_message_the_receiver_did_not_take_leaves_the_warm_up_allowance_alone(env: Env, mx):
    """Five messages deferred at the dot do not count: the ten the receiver takes all leave
    from the source capped at ten a day (its retries would otherwise eat the allowance)."""
    server = mx(script={"DOT": ["451 4.3.0 later"] * 5})
    env.configure(pool_timeout=0)
    write_due(env.inst.queue_dir / "pending", 15, "dest.test", {"tenant": "warm2co"})
    until(lambda: len(server.deliveries) >= 10 and env.logs().count("tenant=warm2co") >= 15
          and env.logs().count("451 4.3.0 later") >= 5, 90)
    taken = Counter(s.peer[0] for s in server.sessions if s.deliveries)
    assert taken == {"127.0.0.10": 10}, taken
    stats = json.loads(env.inst.mailflow("queue", "stats", "--json").stdout)
    assert stats["warmup:mta6:left"] == 0


def test_a_source_address_this_host_lacks_stops_the_worker_with_one_line(make_instance):
    inst: Instance = make_instance()
    inst.write_config("egress.ini", "[source:far]\naddress = 192.0.2.10\nehlo = far.sender.test\n")
    done = inst.celery("worker", "--pool", "solo", timeout=60)
    assert done.returncode != 0
    said = done.stderr.decode()
    assert "egress.ini" in said and "192.0.2.10 is not an address of this host" in said, said
