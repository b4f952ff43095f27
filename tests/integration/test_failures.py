"""Deferrals, bounces, flush and `disabled`, with a real worker, broker, DNS and MX (issue 4)."""

from __future__ import annotations

import email
import email.policy
import json
import time
from pathlib import Path
from typing import Any

from harness.dnsserver import free_port
from harness.mxserver import MXServer
from tests.support.pipeline import (
    PLUGIN,
    PORT,
    Env,
    make_env,
    module_env,
    scheduled,
)

HOOKS = PLUGIN + '''
from mailflow.codes import DENYSOFT

DEFERRED = os.path.join(os.path.dirname(os.environ["MAILFLOW_STATE_DIR"]), "deferred.jsonl")

@hooks.deferred.connect
def on_deferred(hmail, delay, err, **kwargs):
    with open(DEFERRED, "a") as f:
        f.write(json.dumps({"id": hmail.todo.uuid, "delay": delay, "err": err,
                            "fails": hmail.num_failures, "t": __import__("time").time()}) + "\\n")
    answer = hmail.todo.notes.get("deferred_answer")
    if answer == "drop":
        return OK
    if isinstance(answer, (int, float)):
        return DENYSOFT, answer

@hooks.bounce.connect
def on_bounce(hmail, error, **kwargs):
    if hmail.todo.notes.get("no_bounce"):
        return OK
'''


env = module_env("failures", plugin=HOOKS)


def deferred_log(env: Env, uuid: str) -> list[dict[str, Any]]:
    path = env.inst.root / "deferred.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["id"].startswith(uuid)]


def bounces(server: MXServer) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(d.data, policy=email.policy.default)
            for d in server.deliveries if d.mail_from in ("", "<>")]


def test_deferred_twice_then_delivered_on_schedule(env, mx):
    server = mx(script={"DOT": ["451 4.3.0 later", "451 4.3.0 later"]})
    env.configure(temp_fail_intervals="5s, 5s")
    started = time.time()
    uuid = env.send("u@retry.test", notes={"mx": f"127.0.0.2:{PORT}"})
    [d] = server.wait_for(1, timeout=40)
    assert d.at - started >= 9.5  # two waits of 5 s
    seen = deferred_log(env, uuid)
    assert [(e["delay"], e["fails"]) for e in seen] == [(5, 1), (5, 2)]
    assert all("451 4.3.0 later" in e["err"] for e in seen)
    assert seen[1]["t"] - seen[0]["t"] >= 4.5


def test_denysoft_from_the_hook_changes_the_wait(env, mx):
    mx(script={"DOT": ["451 4.3.0 later"]})
    before = time.time() * 1000
    uuid = env.send("u@wait.test", notes={"mx": f"127.0.0.2:{PORT}", "deferred_answer": 7})
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    wait_ms = entry.name.next_attempt_ms - before
    assert 6000 <= wait_ms <= 12000  # 7 s, not the configured 1 h
    # not left to be attempted (and bounced) against the servers of the tests that follow
    done = env.inst.mailflow("queue", "delete", uuid)
    assert done.returncode == 0, done.stderr


def test_ok_from_the_hook_drops_the_mail(env, mx):
    mx(script={"DOT": ["451 4.3.0 later"]})
    uuid = env.send("u@drop.test", notes={"mx": f"127.0.0.2:{PORT}", "deferred_answer": "drop"})
    env.wait(lambda: deferred_log(env, uuid))
    env.wait(lambda: env.settled(uuid) and not env.entries("pending", uuid))
    env.wait(lambda: f"dropped id={uuid}.1" in env.inst.procs[0].output())


def test_exhausted_schedule_bounces_to_the_sender(env, mx):
    server = mx(rcpt={"late@exhaust.test": "451 4.2.1 mailbox busy, try later"})
    env.configure(temp_fail_intervals="none")
    env.send("late@exhaust.test", notes={"mx": f"127.0.0.2:{PORT}"}, sender="alice@sender.test",
             body="Subject: my report\nMessage-Id: <mine@sender.test>\n\nbody\n")
    [bounce] = env.wait(lambda: bounces(server))
    assert server.deliveries[-1].rcpt_to == ["alice@sender.test"]
    assert bounce.get_content_type() == "multipart/report"
    assert bounce["References"] == "<mine@sender.test>"
    text, report, original = bounce.get_payload()
    assert "Too many failures" in text.get_content()
    [block] = [b for b in report.get_payload() if b["Final-Recipient"]]
    # the last reply exactly as received: a 4.x.x status with Action: failed, as Postfix
    # says of expired mail, never a 5xx no server sent (RFC 3464 2.3.6; issue 23 item 10)
    assert block["Action"] == "failed"
    assert block["Status"] == "4.2.1"
    assert block["Diagnostic-Code"] == "smtp; 451 4.2.1 mailbox busy, try later"
    assert original.get_payload()[0]["Subject"] == "my report"
    assert "bounced id=" in env.inst.procs[0].output()


def test_permanent_failure_bounces_once(env, mx):
    server = mx(rcpt={"gone@perm.test": "550 5.1.1 no such user"})
    uuid = env.send(["gone@perm.test", "ok@perm.test"], notes={"mx": f"127.0.0.2:{PORT}"},
                    sender="bob@sender.test")
    [bounce] = env.wait(lambda: bounces(server))
    # settled: the failed entry and the bounce's own are gone -- nothing left to bounce again
    bounce_id = env.bounce_id(uuid)
    env.wait(lambda: env.gone(uuid) and env.gone(bounce_id))
    assert len(bounces(server)) == 1, [(d.rcpt_to, d.data[-600:]) for d in server.deliveries
                                       if d.mail_from in ("", "<>")]
    [block] = [b for b in bounce.get_payload()[1].get_payload() if b["Final-Recipient"]]
    assert block["Final-Recipient"] == "rfc822; gone@perm.test" and block["Status"] == "5.1.1"


def test_bounce_hook_ok_means_no_bounce(env, mx):
    server = mx(rcpt={"gone@nobounce.test": "550 5.1.1 no such user"})
    uuid = env.send("gone@nobounce.test", notes={"mx": f"127.0.0.2:{PORT}", "no_bounce": True},
                    sender="carol@sender.test")
    env.wait(lambda: f"dropped id={uuid}.1.f0" in env.inst.procs[0].output())
    env.wait(lambda: env.gone(uuid))  # the bounce step is over: no bounce can come after
    assert bounces(server) == [] and f"bounced id={uuid}" not in env.logs()


def test_null_sender_is_never_bounced(env, mx):
    server = mx(rcpt={"gone@null.test": "550 5.1.1 no such user"})
    uuid = env.send("gone@null.test", notes={"mx": f"127.0.0.2:{PORT}"}, sender="<>")
    env.wait(lambda: f"dropped id={uuid}.1.f0" in env.inst.procs[0].output())
    env.wait(lambda: env.gone(uuid))  # the bounce step is over: no bounce can come after
    assert bounces(server) == [] and f"bounced id={uuid}" not in env.logs()


def test_flush_attempts_each_deferred_entry_once(env, mx):
    server = mx(script={"DOT": ["451 4.3.0 later"] * 50})
    env.configure(temp_fail_intervals="20s")
    uuids = [env.send(f"u{n}@flush.test", notes={"mx": f"127.0.0.2:{PORT}"}) for n in range(50)]
    env.wait(lambda: len([p for p in env.inst.entries("pending") if "_1_" in p.name]) >= 50)
    flushed = env.inst.celery("call", "mailflow.flush_queue")
    assert flushed.returncode == 0, flushed.stderr
    server.wait_for(50, timeout=10)
    # settled: every entry delivered and gone, and every countdown the first deferrals armed
    # (due 20 s after them) has fired and found nothing to do
    env.wait(lambda: all(env.gone(u) for u in uuids) and "flush.test" not in scheduled(env.inst), 60)
    got = [d.rcpt_to[0] for d in server.deliveries]
    assert sorted(got) == sorted(f"u{n}@flush.test" for n in range(50))  # each exactly once
    assert all(not env.entries("pending", u) for u in uuids)


def test_flush_one_domain_from_the_command_line(env, mx):
    server = mx(script={"DOT": ["451 4.3.0 later"] * 2})
    first = env.send("a@one.test", notes={"mx": f"127.0.0.2:{PORT}"})
    env.send("b@two.test", notes={"mx": f"127.0.0.2:{PORT}"})
    env.wait(lambda: len([p for p in env.inst.entries("pending") if "_1_" in p.name]) >= 2)
    out = env.inst.mailflow("flush", "one.test")
    assert out.returncode == 0 and out.stdout.startswith(b"1 entries due now")
    [d] = server.wait_for(1, timeout=10)
    assert d.rcpt_to == ["a@one.test"]
    env.wait(lambda: env.gone(first))  # settled; two.test's entry waits for its hour
    assert len(server.deliveries) == 1


def test_disabled_pauses_delivery_not_queueing(env, mx):
    paused_before = env.logs().count("delivery paused (outbound.ini disabled = true)")
    server = mx()
    env.configure(disabled="true")
    # the queue manager has seen it: from now on it claims nothing
    env.wait(lambda: env.logs().count("delivery paused (outbound.ini disabled = true)")
             > paused_before)
    for n in range(5):
        env.send(f"u{n}@paused.test", notes={"mx": f"127.0.0.2:{PORT}"})
    assert server.deliveries == []
    assert len([p for p in env.inst.entries("pending") if p.name.endswith("paused.test")]) == 5
    env.configure(disabled="false")
    server.wait_for(5, timeout=15)


# ── brokers and long deferrals ───────────────────────────────────────────────────────


def test_deferral_longer_than_redis_visibility_timeout_runs_once(tmp_path, monkeypatch):
    """Nothing waits in the broker; and a redelivered slow transmit never sends twice."""
    from harness import brokers

    monkeypatch.setenv("MAILFLOW_BROKER_TRANSPORT_OPTIONS", json.dumps(
        {"visibility_timeout": 2, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}))
    env, inst = make_env(tmp_path / "vt", brokers.url_for("redis"), plugin=HOOKS)
    server = MXServer("127.0.0.2", PORT, script={"DOT": ["451 4.3.0 later"]},
                      delay={"RCPT": 3}).start()  # every attempt outlives the visibility timeout
    try:
        env.configure(temp_fail_intervals="6s")
        uuid = env.send("u@vt.test", notes={"mx": f"127.0.0.2:{PORT}"})
        server.wait_for(1, timeout=40)
        # settled: every entry of the message is gone (no attempt can start without one) and
        # Redis holds no copy of any task, waiting or handed out, that could come back
        env.wait(lambda: env.gone(uuid) and brokers.redis_idle(), 60)
        assert len(server.deliveries) == 1
        assert len(deferred_log(env, uuid)) == 1  # one failed attempt, one successful one
        assert len([s for s in server.sessions if s.deliveries or s.quit]) <= 2
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_thousand_day_long_deferrals_cost_the_worker_nothing(env, mx):
    mx(script={"DOT": ["451 4.3.0 later"] * 1000})
    env.configure(temp_fail_intervals="1d")
    worker = env.inst.procs[0]
    before = _rss_kb(worker.pid)
    for n in range(1000):
        env.send(f"u{n}@day.test", notes={"mx": f"127.0.0.2:{PORT}"})
    env.wait(lambda: len([p for p in env.inst.entries("pending")
                          if p.name.endswith("day.test") and "_1_" in p.name]) >= 1000, timeout=120)
    grown_mb = (_rss_kb(worker.pid) - before) / 1024
    assert grown_mb < 50, f"worker grew by {grown_mb:.1f} MB"
    out = env.inst.celery("inspect", "scheduled", "--json", "-d", worker.node, "--timeout", "10")
    scheduled = json.loads(out.stdout)
    assert sum(len(v) for v in scheduled.values()) == 0
    for path in env.inst.entries("pending"):  # leave nothing for a later flush to wake
        if path.name.endswith("day.test"):
            path.unlink()


def test_redis_restarted_empty_loses_nothing(tmp_path, monkeypatch):
    """Batches published, then the broker emptied: the claims expire and the sweep re-dispatches."""
    import redis

    from harness import brokers

    monkeypatch.setenv("MAILFLOW_LEASE_SECONDS", "4")
    url = brokers.url_for("redis")
    env, inst = make_env(tmp_path / "flushall", url, plugin=HOOKS)
    server = MXServer("127.0.0.2", PORT).start()
    try:
        inst.procs[0].stop()  # no worker: batches wait in Redis
        inst.write_config("smtp.ini", f"listen = 127.0.0.1:{free_port()}\n")
        inst.start_smtpd()  # the queue manager runs here now
        for n in range(100):
            env.send(f"u{n}@flushall.test", notes={"mx": f"127.0.0.2:{PORT}"})
        env.wait(lambda: len(inst.entries("active")) == 100)
        redis.Redis.from_url(url).flushdb()  # its database: what the workers see of Redis
        inst.start_worker("after-flushall")
        env.wait(lambda: len({r for d in server.deliveries for r in d.rcpt_to}) == 100, timeout=60)
        assert len(server.deliveries) == 100
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()


def test_sighup_to_smtpd_flushes_the_queue(env, mx):
    import signal

    server = mx(script={"DOT": ["451 4.3.0 later"]})
    env.configure(temp_fail_intervals="1h")
    env.inst.write_config("smtp.ini", f"listen = 127.0.0.1:{free_port()}\n")
    smtpd = env.inst.start_smtpd()
    uuid = env.send("u@hup.test", notes={"mx": f"127.0.0.2:{PORT}"})
    env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    smtpd.popen.send_signal(signal.SIGHUP)
    env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == ["u@hup.test"]], timeout=10)
    assert env.logged("flushed ")
    smtpd.stop()


# ── operating the queue ──────────────────────────────────────────────────────────────


def test_queue_stats_list_delete_and_flush_one(tmp_path):
    env, inst = make_env(tmp_path / "ops", None, plugin=HOOKS)
    later = {f"later{n}@qt.test": ["451 4.2.1 try later"] for n in range(4)}
    gone = {f"gone{n}@qt.test": "550 5.1.1 no such user" for n in range(3)}
    server = MXServer("127.0.0.2", PORT, rcpt={**later, **gone}).start()
    try:
        env.configure(temp_fail_intervals="1h")
        mx_note = {"mx": f"127.0.0.2:{PORT}"}
        for n in range(20):
            env.send(f"ok{n}@qt.test", notes=mx_note, sender="app@sender.test")
        ids = {a: env.send(a, notes=mx_note, sender="app@sender.test") for a in [*later, *gone]}
        # 20 delivered, plus the 3 bounces (entries too) delivered to sender.test's MX
        server.wait_for(23, timeout=60)
        env.wait(lambda: len([p for p in inst.entries("pending") if "_1_" in p.name]) == 4)
        stats = json.loads(inst.mailflow("queue", "stats", "--json").stdout)
        assert stats == {"queued": 0, "in_progress": 0, "waiting": 4, "delivered": 23, "bounced": 3,
                         "dropped": 0}
        worker_title = Path(f"/proc/{inst.procs[0].pid}/cmdline")
        env.wait(lambda: b"mailflow worker out=0/0/4 delivered=23 bounced=3 "
                 in worker_title.read_bytes(), timeout=15)
        rows = json.loads(inst.mailflow("queue", "list", "--json", "--state", "waiting").stdout)
        assert sorted(r["rcpt_to"][0] for r in rows) == sorted(later)
        assert all(r["num_failures"] == 1 and "451 4.2.1 try later" in r["last_error"] and
                   r["next_attempt"] > time.time() + 3000 for r in rows)
        shown = inst.mailflow("queue", "show", ids["later2@qt.test"]).stdout.decode()
        assert "later2@qt.test" in shown and "Subject: test" in shown
        assert "via 127.0.0.2: 451 4.2.1 try later" in shown  # the history of attempts
        deleted = inst.mailflow("queue", "delete", ids["later0@qt.test"])
        assert deleted.stdout.startswith(b"1 entries deleted")
        one = inst.mailflow("flush", "--id", ids["later1@qt.test"])
        assert one.stdout.startswith(b"1 entries due now")
        env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == ["later1@qt.test"]])
        assert inst.mailflow("flush").stdout.startswith(b"2 entries due now")
        server.wait_for(26, timeout=30)
        env.wait(lambda: not inst.all_files())  # settled: every entry delivered or deleted
        got = [r for d in server.deliveries for r in d.rcpt_to]
        assert "later0@qt.test" not in got and got.count("later1@qt.test") == 1
        stats = json.loads(inst.mailflow("queue", "stats", "--json").stdout)
        assert (stats["waiting"], stats["delivered"], stats["dropped"]) == (0, 26, 1)
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()
