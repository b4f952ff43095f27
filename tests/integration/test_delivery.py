"""The delivery pipeline with real workers, a real broker, the DNS and MX fixtures (issue 3)."""

from __future__ import annotations

import pytest

from harness.mxserver import MXServer
from tests.support.pipeline import PORT, make_env, module_env

env = module_env("delivery", environ={"MAILFLOW_BATCH_MAX": "5"}, concurrency=16)


# ── MX selection ─────────────────────────────────────────────────────────────────────


def test_preferred_mx_refusing_connections_fails_over(env, mx):
    server = mx()
    env.send("u@failover.test")
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["u@failover.test"]


def test_equal_preferences_share_the_mail(env, mx):
    a, b = mx("127.0.0.2"), mx("127.0.0.3")
    for n in range(200):
        env.send(f"u{n}@equal.test")
    env.wait(lambda: len(a.deliveries) + len(b.deliveries) >= 200, timeout=90)
    assert a.deliveries and b.deliveries


def test_implicit_mx_is_used(env, mx):
    server = mx()
    env.send("u@implicit.test")
    server.wait_for(1)


@pytest.mark.parametrize("domain,status,state", [
    ("nullmx.test", "5.1.10", "failed"), ("nowhere.test", "5.1.2", "failed"),
    ("broken.test", "4.4.3", "pending")])
def test_dns_failures(env, domain, status, state):
    uuid = env.send(f"u@{domain}", sender="<>")  # no bounce to reach another test's MX
    if state == "failed":
        env.wait(lambda: env.logged(f"failed id={uuid}.1 rcpt=u@{domain} status={status} "))
        return
    [entry] = env.wait(lambda: [e for e in env.entries(state, uuid) if e.todo.record])
    [rcpt_status] = entry.todo.record["rcpt_status"].values()
    assert rcpt_status["status"] == status
    assert entry.num_failures == 1


# ── get_mx answers ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("answer", [
    "mx.test", f"mx.test:{PORT}", "127.0.0.2", f"127.0.0.2:{PORT}",
    {"exchange": "127.0.0.2", "port": PORT},
    [f"127.0.0.9:{PORT}", {"exchange": "127.0.0.2", "port": PORT}],
], ids=["host", "host:port", "ip", "ip:port", "dict", "list"])
def test_get_mx_answer_forms_route_where_they_say(env, mx, answer):
    server = mx()
    env.send("u@anything.test", notes={"mx": answer})
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["u@anything.test"]


def test_get_mx_ipv6_literal_and_object(env, mx):
    v6 = mx("::1", PORT)
    env.send("u@v6.test", notes={"mx": f"[::1]:{PORT}"})
    v6.wait_for(1)
    v4 = mx("127.0.0.3", PORT)
    env.send("u@obj.test", notes={"mx_object": {"exchange": "127.0.0.3", "port": PORT}})
    v4.wait_for(1)


def test_bind_and_bind_helo(env, mx):
    server = mx()
    env.send("u@bind.test", notes={"mx": {"exchange": "127.0.0.2", "port": PORT,
                                          "bind": "127.0.0.5", "bind_helo": "out.example.test"}})
    server.wait_for(1)
    assert server.sessions[-1].peer[0] == "127.0.0.5"
    assert server.sessions[-1].ehlo == "out.example.test"


def test_notes_outbound_ip_and_helo(env, mx):
    server = mx()
    env.send("u@notes.test", notes={"mx": f"127.0.0.2:{PORT}", "outbound_ip": "127.0.0.6",
                                    "outbound_helo": "notes.example.test"})
    server.wait_for(1)
    assert (server.sessions[-1].peer[0], server.sessions[-1].ehlo) == ("127.0.0.6", "notes.example.test")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_from_get_mx(env, mx, mechanism):
    server = mx(users={"relayuser": "relaypass"})
    env.send("u@auth.test", notes={"mx": {"exchange": "127.0.0.2", "port": PORT,
                                          "auth_user": "relayuser", "auth_pass": "relaypass",
                                          "auth_type": mechanism}})
    server.wait_for(1)
    assert server.sessions[-1].auth_user == "relayuser"
    assert server.sessions[-1].mechanism == mechanism


def test_lmtp_gives_one_result_per_recipient(env, mx):
    server = mx(lmtp=True, script={"DOT:full@lmtp.test": "452 4.2.2 mailbox full"})
    uuid = env.send(["ok@lmtp.test", "full@lmtp.test"],
                    notes={"mx": {"exchange": "127.0.0.2", "port": PORT, "using_lmtp": True}})
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["ok@lmtp.test"]
    [waiting] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    assert [r.address for r in waiting.todo.rcpt_to] == ["full@lmtp.test"]
    [seen] = env.wait(lambda: [e for e in env.delivered_log() if e["id"].startswith(uuid)])
    assert seen["mode"] == "LMTP" and seen["ok"] == ["ok@lmtp.test"]


# ── TLS ──────────────────────────────────────────────────────────────────────────────


def test_starttls_when_enabled(env, mx, mx_tls_context):
    server = mx(tls_context=mx_tls_context)
    env.configure(enable_tls="true")
    uuid = env.send("u@tls.test", notes={"mx": f"mx.test:{PORT}"})
    server.wait_for(1)
    assert server.sessions[-1].tls
    [seen] = env.wait(lambda: [e for e in env.delivered_log() if e["id"].startswith(uuid)])
    assert seen["secured"] is True
    assert seen["params"] == [seen["host"], seen["ip"], seen["response"], seen["params"][3],
                              seen["port"], "SMTP", ["u@tls.test"], True]


def test_force_tls_without_starttls_defers(env, mx):
    server = mx()
    env.inst.write_config("tls.ini", "[outbound]\nforce_tls_hosts = mx.test\n")
    try:
        env.configure(enable_tls="true")
        uuid = env.send("u@forced.test", notes={"mx": f"mx.test:{PORT}"})
        [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
        assert entry.num_failures == 1 and "TLS" in entry.todo.record["last_error"]
        assert server.deliveries == []
    finally:
        env.inst.write_config("tls.ini", "")


def test_no_tls_hosts_stay_plain(env, mx, mx_tls_context):
    server = mx(tls_context=mx_tls_context)
    env.inst.write_config("tls.ini", "[outbound]\nno_tls_hosts = 127.0.0.0/8\n")
    try:
        env.configure(enable_tls="true")
        env.send("u@plain.test", notes={"mx": f"mx.test:{PORT}"})
        server.wait_for(1)
        assert not server.sessions[-1].tls
    finally:
        env.inst.write_config("tls.ini", "")


# ── per-recipient outcomes ───────────────────────────────────────────────────────────


def test_one_delivered_one_deferred_one_failed(env, mx):
    server = mx(rcpt={"later@split.test": "451 4.2.1 try again later",
                      "gone@split.test": "550 5.1.1 no such user here"})
    uuid = env.send(["ok@split.test", "later@split.test", "gone@split.test"],
                    notes={"mx": f"127.0.0.2:{PORT}"})
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["ok@split.test"]
    [deferred] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    assert [r.address for r in deferred.todo.rcpt_to] == ["later@split.test"]
    assert deferred.num_failures == 1
    assert env.logged(f"failed id={uuid}.1 rcpt=gone@split.test status=5.1.1 "
                      "response='550 5.1.1 no such user here'")
    # the failed recipient's record reaches the sender as its bounce (sender.test's MX is this one)
    bounce = server.wait_for(2)[1]
    assert bounce.rcpt_to == ["a@sender.test"] and bounce.mail_from in ("", "<>")
    report = bounce.data.decode()
    assert "Final-Recipient: rfc822; gone@split.test" in report and "Status: 5.1.1" in report
    assert "Remote-MTA: dns; 127.0.0.2" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user here" in report
    assert "later@split.test" not in report.split("message/delivery-status")[1].split("--mailflow")[0]
    log = env.inst.procs[0].output()
    assert f"id={uuid}.1 domain=split.test" in log and "rcpts=1/1/1" in log


def test_received_header_follows_config(env, mx):
    server = mx()
    env.configure(received_header="corp relay")
    env.send("u@recv.test", notes={"mx": f"127.0.0.2:{PORT}"})
    env.configure(received_header="disabled")
    env.send("v@recv.test", notes={"mx": f"127.0.0.2:{PORT}"})
    got = {d.rcpt_to[0]: d.data for d in server.wait_for(2)}
    assert got["u@recv.test"].startswith(b"Received: by mailflow.test (corp relay) id ")
    assert b"Received:" not in got["v@recv.test"]


# ── addresses ────────────────────────────────────────────────────────────────────────


def test_ipv6_enabled_prefers_aaaa(env, mx):
    v4, v6 = mx("127.0.0.1", PORT), mx("::1", PORT)
    env.configure(ipv6_enabled="true")
    env.send("u@dual.test")
    v6.wait_for(1)
    env.configure(ipv6_enabled="false")
    env.send("v@dual.test")
    v4.wait_for(1)
    assert len(v6.deliveries) == 1


def test_local_mx_ok(env, mx):
    server = mx()
    env.configure(local_mx_ok="false")
    uuid = env.send("u@dest.test", sender="<>")
    env.wait(lambda: env.logged(f"failed id={uuid}.1 rcpt=u@dest.test status=5.4.6 "))
    assert server.deliveries == []
    env.send("u@getmx-local.test", notes={"mx": f"127.0.0.2:{PORT}"})  # never checked
    server.wait_for(1)
    env.configure(local_mx_ok="true")
    env.send("v@dest.test")
    server.wait_for(2)


# ── pooling and limits ───────────────────────────────────────────────────────────────


def test_pooled_connections_are_shared_and_capped(env, mx):
    server = mx()
    env.configure(pool_timeout=50, pool_concurrency_max=3)
    for n in range(500):
        env.send(f"u{n}@dest.test")
    server.wait_for(500, timeout=120)
    assert server.high_water <= 3
    assert len(server.sessions) <= 3 * 2  # replaced sessions at most; most messages share one


def test_pool_timeout_zero_means_one_connection_per_message(env, mx):
    """Counted on this test's own messages: an earlier test's deferred message, due again
    (64 s later by the default schedule), may reach this receiver in a session of its own."""
    server = mx()
    env.configure(pool_timeout=0)
    for n in range(500):
        env.send(f"u{n}@dest.test")

    def ours() -> list:
        return [s for s in server.sessions
                if any(r.endswith("@dest.test") for d in s.deliveries for r in d.rcpt_to)]

    env.wait(lambda: sum(len(s.deliveries) for s in ours()) >= 500, timeout=120)
    env.wait(lambda: all(s.closed for s in server.sessions), timeout=30)
    assert len(ours()) == 500
    odd = [(s.peer, [d.rcpt_to for d in s.deliveries], s.quit, s.closed) for s in server.sessions
           if not (len(s.deliveries) == 1 and s.quit)]
    assert odd == [], (odd[:5], env.inst.dump_logs()[-6000:])  # flaky under the full suite: say which
    empty = [s for s in server.sessions if not s.deliveries]  # a connection opened for nothing
    assert empty == [], env.inst.dump_logs()[-6000:]


def test_a_known_slow_receivers_batches_use_the_connection_they_have(env, mx):
    """A receiver found slow has its next batches shared over extra lanes from their first
    message; each batch's own session carries one of them, never closed unused (it was,
    when the lanes took every message first: an empty session each time, under load)."""
    server = mx("127.0.0.3", delay={"DOT": 0.3})
    route = {"mx": f"127.0.0.3:{PORT}"}  # a receiver of its own: slowness is remembered per MX set
    env.configure(pool_timeout=0)
    for n in range(5):  # one batch whose first message is slow: the receiver is known slow now
        env.send(f"u{n}@slowfirst.test", notes=route)
    server.wait_for(5, timeout=60)
    env.wait(lambda: all(s.closed for s in server.sessions), timeout=30)
    for n in range(100):
        env.send(f"v{n}@slowthen.test", notes=route)
    server.wait_for(105, timeout=120)
    env.wait(lambda: all(s.closed for s in server.sessions), timeout=30)
    empty = [s.peer for s in server.sessions if not s.deliveries]
    assert empty == [], f"{len(empty)} of {len(server.sessions)} sessions carried no message"


def test_idle_connection_quits_after_pool_timeout(env, mx):
    server = mx()
    env.configure(pool_timeout=2)
    env.send("u@dest.test")
    server.wait_for(1)
    assert not server.sessions[0].closed  # kept for reuse
    env.wait(lambda: server.sessions[0].closed, timeout=10)
    assert server.sessions[0].quit


def test_concurrency_max_with_a_slow_mx(env, mx):
    server = mx(delay={"MAIL": 0.3})
    env.configure(concurrency_max=5, pool_timeout=0)
    for n in range(40):
        env.send(f"u{n}@slow{n % 10}.test", notes={"mx": f"127.0.0.2:{PORT}"})
    server.wait_for(40, timeout=90)
    assert 1 < server.high_water <= 5


def test_pooled_connection_closed_by_the_remote_end_is_replaced(env, mx):
    server = mx()
    env.configure(pool_timeout=50)
    env.send("u@dest.test")
    server.wait_for(1)
    server.drop_connections()
    env.wait(lambda: all(s.closed for s in server.sessions))
    uuid = env.send("v@dest.test")
    server.wait_for(2)
    assert len(server.sessions) == 2
    assert not env.entries("pending", uuid)  # delivered on its first attempt, no deferral
    assert f"id={uuid}.1 domain=dest.test" in env.inst.procs[0].output()
    assert "fails=0 rcpts=1/0/0" in env.inst.procs[0].output().split(f"id={uuid}.1")[1].split("\n")[0]


# ── the same pipeline on the production brokers ─────────────────────────────────────


@pytest.mark.parametrize("name", ["redis", "rabbitmq"])
def test_delivery_on_production_brokers(tmp_path, name):
    from harness import brokers

    url = brokers.url_for(name)
    env, inst = make_env(tmp_path / name, url)
    server = MXServer("127.0.0.2", PORT, rcpt={"later@b.test": "451 4.2.1 later",
                                               "gone@b.test": "550 5.1.1 gone"}).start()
    try:
        split = env.send(["ok@b.test", "later@b.test", "gone@b.test"],
                         notes={"mx": f"127.0.0.2:{PORT}"})
        for n in range(20):
            env.send(f"u{n}@dest.test")
        got = server.wait_for(21, timeout=60)
        assert sorted(r for d in got for r in d.rcpt_to if r.endswith("b.test")) == ["ok@b.test"]
        env.wait(lambda: [e for e in env.entries("pending", split) if e.num_failures == 1])
        env.wait(lambda: env.logged(f"failed id={split}.1 rcpt=gone@b.test status=5.1.1 "))
        assert len(server.sessions) < 21  # batches shared connections
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()


# ── the session ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("script", [{"banner": "421 4.3.2 busy"}, {"banner": "554 5.3.2 go away"},
                                    {"EHLO": "451 4.3.0 later"},
                                    {"EHLO": "550 5.7.1 no", "HELO": "550 5.7.1 no"}],
                         ids=["4xx-banner", "5xx-banner", "4xx-ehlo", "5xx-ehlo-and-helo"])
def test_refusing_banner_or_greeting_moves_to_the_next_address(env, mx, script):
    refusing = mx("127.0.0.3", PORT, script=script)
    good = mx("127.0.0.2", PORT)
    env.send("u@next.test", notes={"mx": [f"127.0.0.3:{PORT}", f"127.0.0.2:{PORT}"]})
    good.wait_for(1)
    assert refusing.deliveries == []


def test_helo_when_ehlo_is_not_understood(env, mx):
    server = mx(script={"EHLO": "502 5.5.1 command not implemented"})
    env.send("u@helo.test", notes={"mx": f"127.0.0.2:{PORT}"})
    server.wait_for(1)


def test_timeout_after_the_final_dot_defers_and_does_not_try_another_mx(env, mx):
    slow = mx("127.0.0.3", PORT, delay={"DOT": 4})
    other = mx("127.0.0.2", PORT)
    env.configure(timeout_end_of_data=1)
    uuid = env.send("u@eod.test", notes={"mx": [f"127.0.0.3:{PORT}", f"127.0.0.2:{PORT}"]})
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    assert "end of data" in entry.todo.record["last_error"]
    assert other.deliveries == [] and other.sessions == []
    assert len(slow.sessions) == 1


def test_size_is_declared_when_advertised(env, mx):
    server = mx()
    env.send("u@size.test", notes={"mx": f"127.0.0.2:{PORT}"}, body="Subject: s\n\n" + "x" * 300 + "\n")
    [d] = server.wait_for(1)
    size = [o for o in d.mail_options if o.upper().startswith("SIZE=")]
    assert size and int(size[0].split("=")[1]) >= 300


# ── crash safety ─────────────────────────────────────────────────────────────────────


def test_kill_9_of_the_worker_mid_delivery_loses_nothing(tmp_path, monkeypatch):
    """Claims of a dead worker expire and are attempted again; duplicates only for what was in flight."""
    monkeypatch.setenv("MAILFLOW_LEASE_SECONDS", "4")
    env, inst = make_env(tmp_path / "crash", None)
    server = MXServer("127.0.0.2", PORT, delay={"DOT": 0.1}).start()
    try:
        env.configure(pool_concurrency_max=4)
        for n in range(200):
            env.send(f"u{n}@crash.test", notes={"mx": f"127.0.0.2:{PORT}"})
        server.wait_for(20, timeout=60)
        inst.procs[0].kill9()
        in_flight = server.current
        inst.start_worker("restarted")
        env.wait(lambda: len({r for d in server.deliveries for r in d.rcpt_to}) == 200, timeout=120)
        everyone = [r for d in server.deliveries for r in d.rcpt_to]
        assert len(everyone) - 200 <= max(in_flight, 4)
        env.wait(lambda: not inst.entries("pending") and not inst.entries("active"))
    finally:
        server.stop()
        inst.stop_all()
        env.dns.stop()
