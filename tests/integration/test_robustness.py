"""The pipeline under what nobody planned for: plugin bugs, odd replies, forged tasks, a full disk,
a crowd of batches for one connection slot (issue 10, items 2, 9, 11, 13, 14)."""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any

import pytest

from harness.mxserver import MXServer
from tests.support.disk import fill
from tests.support.pipeline import PLUGIN, PORT, Env, make_env, module_env

ODD = PLUGIN + '''

@hooks.get_mx.connect
def odd_get_mx(hmail, domain, **kwargs):
    odd = hmail.todo.notes.get("odd")
    if odd == "raise":
        raise RuntimeError("plugin bug in get_mx")
    if odd == "per-rcpt":
        bad = hmail.todo.rcpt_to[0].user.startswith("bad")
        return OK, hmail.todo.notes["bad_answer" if bad else "good_answer"]

@hooks.delivered.connect
def odd_delivered(hmail, **kwargs):
    if hmail.todo.notes.get("odd") == "delivered":
        raise RuntimeError("plugin bug in delivered")
'''


env = module_env("robust", plugin=ODD)


def deferred_once(env: Env, uuid: str) -> Any:
    """The message's entry, back in pending/ with one failure, its claim gone."""
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    assert entry.num_failures == 1
    env.wait(lambda: not [p for p in env.inst.entries("active") if f"_{uuid}." in p.name])
    return entry


# ── item 2: whatever is raised ends as a deferral, never a lease-expiry loop ──────────


def test_get_mx_receiver_that_raises_defers_the_entry(env, mx):
    uuid = env.send("u@odd.test", notes={"odd": "raise"})
    entry = deferred_once(env, uuid)
    assert "plugin bug in get_mx" in entry.todo.record["history"][-1]["error"]
    assert env.logged("Traceback") and env.logged("RuntimeError: plugin bug in get_mx")


def test_delivered_receiver_that_raises_changes_nothing(env, mx):
    server = mx()
    uuid = env.send("u@odd.test", notes={"odd": "delivered", "mx": f"127.0.0.2:{PORT}"})
    server.wait_for(1)
    env.wait(lambda: env.settled(uuid) and not env.entries("pending", uuid))
    assert env.logged("RuntimeError: plugin bug in delivered")
    assert len(server.deliveries) == 1


def test_a_reply_smtplib_cannot_parse_defers_with_the_error_in_history(env, mx):
    # smtplib decodes a 334 challenge with base64 and raises binascii.Error on this one
    server = mx(users={"user": "pass"}, script={"AUTH": "334 !!not-base64!!"})
    uuid = env.send("u@odd.test", notes={"mx": {"exchange": "127.0.0.2", "port": PORT,
                                                 "auth_user": "user", "auth_pass": "pass",
                                                 "auth_type": "LOGIN"}})
    entry = deferred_once(env, uuid)
    assert "internal error" in entry.todo.record["history"][-1]["error"]
    assert server.deliveries == []
    assert env.logged(f"unexpected error handling {uuid}.1")


# ── item 14: one bad get_mx answer defers that entry alone ─────────────────────────────


@pytest.mark.parametrize("bad", [{"exchange": "127.0.0.2", "port": [PORT]},
                                 {"exchange": "127.0.0.2", "port": PORT, "priority": float("inf")},
                                 {"exchange": ["127.0.0.2"]}],
                         ids=["port-list", "priority-inf", "exchange-list"])
def test_bad_get_mx_answer_defers_that_entry_and_the_rest_of_its_batch_goes(env, mx, bad):
    server = mx()
    env.configure(always_split="true")  # one message, two entries, claimed as one batch
    uuid = env.send(["bad@split.test", "good@split.test"],
                    notes={"odd": "per-rcpt", "bad_answer": bad, "good_answer": f"127.0.0.2:{PORT}"})
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["good@split.test"]
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    assert [r.address for r in entry.todo.rcpt_to] == ["bad@split.test"]
    [status] = entry.todo.record["rcpt_status"].values()
    assert status["status"] == "4.3.5" and "bad get_mx answer" in status["text"]


# ── item 11: task payloads are never paths ─────────────────────────────────────────────


FORGED = [
    {"claim": "../pending", "names": []},
    {"claim": "../pending", "names": [], "domain": "x.test"},
    {"claim": "0" * 32, "names": ["../../outside/victim"], "domain": "x.test"},
    {"claim": "/tmp", "names": ["victim"]},
    {"claim": "0" * 32, "names": ["/etc/passwd"]},
    {"claim": "../../outside", "names": ["victim"], "mx": [{"exchange": "127.0.0.2"}],
     "domain": "x.test"},
]


def test_forged_task_payloads_are_refused_and_touch_nothing(env, mx):
    outside = env.inst.root / "outside"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim"
    victim.write_text("keep me")
    for task in ("mailflow.lookup_mx", "mailflow.acquire_connection", "mailflow.transmit",
                 "mailflow.bounce"):
        for payload in FORGED:
            done = env.inst.celery("call", task, "--args", json.dumps([payload]))
            assert done.returncode == 0, done.stderr
    env.wait(lambda: sum(p.output().count("refused a payload") for p in env.inst.procs)
             >= 4 * len(FORGED))
    assert victim.read_text() == "keep me"
    assert (env.inst.queue_dir / "pending").is_dir() and (env.inst.queue_dir / "failed").is_dir()
    server = mx()  # and the queue still works
    env.send("u@after.test", notes={"mx": f"127.0.0.2:{PORT}"})
    server.wait_for(1)


# ── item 9: no worker thread waits for a connection slot ───────────────────────────────


@pytest.mark.parametrize("pool_timeout", [50, 0])
def test_many_batches_for_one_slot_never_stall_the_worker(tmp_path, monkeypatch, pool_timeout):
    """Thirty batches through one slot: each acquire_connection that finds it taken leaves a
    waiter and frees its thread, and is sent again when the slot frees -- none is deferred.

    (The stall this replaces -- every thread waiting in the pool for a slot held by a lease
    whose transmit had no thread left -- needs many threads under load to show; see
    test_pool.py for the invariant and test_delivery's pool_timeout=0 test, which met it.)"""
    monkeypatch.setenv("MAILFLOW_BATCH_MAX", "1")
    env, inst = make_env(tmp_path / "slots", None, concurrency=2)
    server = MXServer("127.0.0.2", PORT).start()
    try:
        env.configure(pool_concurrency_max=1, pool_timeout=pool_timeout)
        for n in range(30):
            env.send(f"u{n}@slots.test", notes={"mx": f"127.0.0.2:{PORT}"})
        server.wait_for(30, timeout=60)  # far below the 120 s a stalled slot wait took
        assert server.high_water == 1
        env.wait(lambda: not inst.entries("pending") and not inst.entries("active"))
        assert not env.logged("4.4.5")
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()


# ── item 13: a full disk while recording an outcome leaks no connection slot ──────────


def test_full_disk_while_recording_an_outcome_frees_the_connection_slot(tmp_path, small_disk):
    env, inst = make_env(tmp_path / "full", None, base={"queue_dir": str(small_disk / "queue")})
    server = MXServer("127.0.0.2", PORT, script={"DOT": ["451 4.3.0 not now"]}).start()
    try:
        env.configure(pool_concurrency_max=1)
        reached, release = server.hold("DOT")
        first = env.send("u1@full.test", notes={"mx": f"127.0.0.2:{PORT}"})
        assert reached.wait(30)
        filler = fill(small_disk)  # the deferral's rewrite will meet ENOSPC
        release.set()
        env.wait(lambda: env.logged("No space left on device"))
        [back] = env.wait(lambda: [p for p in (small_disk / "queue" / "pending").iterdir()
                                   if f"_{first}." in p.name])
        assert back.name.split("_")[1] == "1"  # deferred by rename, its failure counted
        filler.unlink()
        env.send("u2@full.test", notes={"mx": f"127.0.0.2:{PORT}"})
        [d] = server.wait_for(1, timeout=30)  # the only slot was freed: no 4.4.5 wait
        assert d.rcpt_to == ["u2@full.test"]
        assert not env.logged("no free connection slot")
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()


# ── item 5: get_mx credentials never cross the broker in clear ───────────────────────


#: A kombu message's body inside a broker command (MONITOR escapes the quotes around it).
BODY = re.compile(r'"body\\?": \\?"([A-Za-z0-9+/=]+)')


def _texts(raw: str) -> list[str]:
    """A broker command or value, and every kombu message body inside it, base64-decoded."""
    return [raw, *(base64.b64decode(b).decode("utf-8", "replace") for b in BODY.findall(raw))]


def test_get_mx_password_never_crosses_the_broker(tmp_path):
    import redis

    from harness import brokers

    url = brokers.url_for("redis")
    assert url is not None
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every command the broker receives: pushes, publishes (events), sets
        with redis.Redis.from_url(url).monitor() as monitor:
            for info in monitor.listen():
                seen.append(info["command"])
                if done.is_set():
                    return

    threading.Thread(target=watch, daemon=True).start()
    password = "hunter2-never-in-clear"
    env, inst = make_env(tmp_path / "sealed", url)
    server = MXServer("127.0.0.2", PORT, users={"relayuser": password}).start()
    try:
        env.send("u@sealed.test", notes={"mx": {"exchange": "127.0.0.2", "port": PORT,
                                                 "auth_user": "relayuser", "auth_pass": password}})
        server.wait_for(1)
        assert server.sessions[-1].auth_user == "relayuser"  # it did authenticate
        client = redis.Redis.from_url(url)
        stored = []
        for key in client.scan_iter():
            kind = client.type(key)
            if kind == b"list":
                stored += [v.decode() for v in client.lrange(key, 0, -1)]
            elif kind == b"string":
                stored.append((client.get(key) or b"").decode("utf-8", "replace"))
            elif kind == b"hash":
                stored += [v.decode("utf-8", "replace") for v in client.hgetall(key).values()]
    finally:
        done.set()
        server.stop()
        inst.stop_all()
        env.dns.stop()
    decoded = [text for raw in seen for text in _texts(raw)[1:]]
    assert any('"exchange"' in text for text in decoded)  # the scan read the batches' MX lists
    leaks = [text for raw in seen + stored for text in _texts(raw) if password in text]
    assert not leaks, leaks[0][:500]
    assert (inst.config_dir / "broker.key").stat().st_mode & 0o077 == 0  # the key is private
