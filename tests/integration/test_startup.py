"""Processes refuse to start half-configured; `mailflow run` is the newcomer's one command."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from harness.dnsserver import DNSServer, free_port
from harness.instance import Instance, Proc
from harness.mxserver import MX_PORT, MXServer
from harness.waiting import until


@pytest.mark.parametrize("command", ["smtpd", "run", "send"])
def test_config_syntax_error_names_file_and_line_and_exits_nonzero(make_instance, command):
    inst: Instance = make_instance()
    inst.write_config("outbound.ini", "enable_tls = true\n\nconcurrency_max = many\n")
    args = [command] + (["-f", "a@b.example", "c@d.example"] if command == "send" else [])
    out = inst.mailflow(*args, input=b"x", timeout=30)
    assert out.returncode != 0
    assert f"{inst.config_dir / 'outbound.ini'}:3: concurrency_max must be a positive integer" in \
        out.stderr.decode()


def test_worker_refuses_a_broken_config(make_instance):
    inst: Instance = make_instance()
    inst.write_config("smtp.ini", "[main\n")
    out = inst.celery("worker", "--pool", "solo", timeout=60)
    assert out.returncode != 0
    assert f"{inst.config_dir / 'smtp.ini'}:1: malformed section header" in out.stderr.decode()


def test_plugin_import_error_stops_the_process(make_instance):
    inst: Instance = make_instance()
    inst.write_config("plugins", "# comment\nno_such_plugin_module\n")
    out = inst.mailflow("smtpd", timeout=30)
    assert out.returncode != 0
    err = out.stderr.decode()
    assert f"{inst.config_dir / 'plugins'}:2: cannot import plugin 'no_such_plugin_module'" in err


def test_help_for_every_command(make_instance):
    inst: Instance = make_instance()
    for args in (["--help"], ["run", "--help"], ["smtpd", "--help"], ["send", "--help"]):
        out = inst.mailflow(*args)
        assert out.returncode == 0 and b"usage:" in out.stdout


def test_mailflow_send_queues_from_stdin(make_instance):
    inst: Instance = make_instance()
    out = inst.mailflow("send", "-f", "app@sender.example", "x@dest.example", "y@other.example",
                        input=b"Subject: cli\n\nhello\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"Message Queued (")
    assert len(inst.entries()) == 2
    bad = inst.mailflow("send", "-f", "app@sender.example", "not-an-address", input=b"x")
    assert bad.returncode == 1 and b"malformed" in bad.stderr


def test_startup_removes_leftover_temp_files_and_moves_corrupt_entries_aside(make_instance):
    port = free_port()
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{port}\n"})
    pending = inst.queue_dir / "pending"
    pending.mkdir(parents=True)
    (pending / "__tmp__.999999999.0000000000001_0_0000000000001_X.1_a.example").write_bytes(b"half")
    (pending / "0000000000001_0_0000000000001_C.1_a.example").write_bytes(b"\x00\x00\x00\x09{broken")
    inst.start_smtpd()
    assert sorted(p.name for p in pending.iterdir()) == [
        "error.0000000000001_0_0000000000001_C.1_a.example"]


def test_make_run_style_all_in_one_listens_queues_and_stops_cleanly(make_instance):
    port = free_port()
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{port}\n"})
    (inst.config_dir / "broker.key").unlink()  # a first start: mailflow makes it
    started = time.monotonic()
    proc = inst.spawn("run", inst.mailflow_argv("run"))
    out = proc.wait_for_output(f"listening on 127.0.0.1:{port}", timeout=10)
    assert time.monotonic() - started < 10
    proc.wait_for_output("try: ", timeout=5)
    assert "curl" in proc.output()
    # the embedded worker comes up too (one process tree)
    proc.wait_for_output(" ready.", timeout=60)
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as s:
        s.login("demo", "demo-password")  # the shipped example user
        s.mail("you@example.com")
        s.rcpt("someone@example.net")
        code, reply = s.data(b"Subject: first\r\n\r\nhello\r\n")
    assert code == 250 and b"Message Queued (" in reply
    assert any("someone" in p.read_bytes().decode(errors="replace") for p in inst.all_files())
    assert out
    # the key it made at start is no change to warn about: once the watcher has seen a real one
    # (outbound.ini), it has said nothing of broker.key
    outbound = inst.config_dir / "outbound.ini"
    outbound.write_text(outbound.read_text() + "\n; touched\n")
    proc.wait_for_output("reloaded outbound.ini", timeout=20)
    assert "broker.key changed" not in proc.output()
    proc.popen.send_signal(signal.SIGINT)
    assert proc.popen.wait(40) == 0
    assert "Warm shutdown" in proc.output() or "worker: Warm shutdown" in proc.output()


def test_json_log_format_gives_the_same_fields(make_instance):
    import json

    inst: Instance = make_instance()
    out = inst.mailflow("--log-format", "json", "send", "-f", "app@sender.example", "x@dest.example",
                        input=b"Subject: j\n\nx\n")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stderr.decode().splitlines() if line.startswith("{")]
    [queued] = [e for e in events if e.get("event") == "queued"]
    assert queued["from"] == "<app@sender.example>" and queued["rcpts"] == "<x@dest.example>"
    assert queued["client"] == "local" and queued["size"] > 0 and queued["id"]


def test_sendmail_t_i_f(make_instance):
    from mailflow.message import dot_unstuff
    from mailflow.queue.hmail import HMail

    inst: Instance = make_instance()
    out = inst.mailflow("sendmail", "-t", "-i", "-f", "b@y.test",
                        input=b"To: a@x.test\nBcc: hidden@z.test\nSubject: s\n\nbody\n.\nmore\n")
    assert out.returncode == 0, out.stderr
    entries = {HMail.load(p).todo.domain: HMail.load(p) for p in inst.entries()}
    assert set(entries) == {"x.test", "z.test"}
    todo = entries["x.test"].todo
    assert todo.mail_from.address == "b@y.test"
    assert [r.address for r in todo.rcpt_to] == ["a@x.test"]
    body = dot_unstuff(entries["x.test"].message())
    assert b"Bcc:" not in body and b"hidden" not in body
    assert body.endswith(b"\r\nbody\r\n.\r\nmore\r\n")  # -i: the lone dot is content


def test_sendmail_without_i_stops_at_a_lone_dot_and_adds_from(make_instance):
    from mailflow.message import dot_unstuff
    from mailflow.queue.hmail import HMail

    inst: Instance = make_instance()
    out = inst.mailflow("sendmail", "-oi", "-F", "App Name", "-f", "app@y.test", "r@x.test",
                        input=b"Subject: s\n\nbody\n")
    assert out.returncode == 0, out.stderr
    out = inst.mailflow("sendmail", "-f", "app@y.test", "q@w.test",
                        input=b"Subject: s\n\nfirst\n.\nnot part of it\n")
    assert out.returncode == 0, out.stderr
    bodies = {HMail.load(p).todo.domain: dot_unstuff(HMail.load(p).message()) for p in inst.entries()}
    assert b'From: App Name <app@y.test>\r\n' in bodies["x.test"]
    assert bodies["w.test"].endswith(b"\r\nfirst\r\n") and b"not part" not in bodies["w.test"]
    bad = inst.mailflow("sendmail", "-f", "app@y.test", "not-an-address", input=b"x\n")
    assert bad.returncode == 67


# ── issue 10: bad environment, taken port, JSON logs everywhere ───────────────────────


def one_clear_line(out: subprocess.CompletedProcess[bytes], text: str) -> None:
    err = out.stderr.decode()
    assert out.returncode != 0
    assert "Traceback" not in err and "Traceback" not in out.stdout.decode()
    [line] = [ln for ln in err.splitlines() if text in ln]
    assert line.startswith("mailflow: "), err


@pytest.mark.parametrize("value", ["{not json", "[1, 2]"])
@pytest.mark.parametrize("command", ["smtpd", "run", "send", "worker", "call"])
def test_malformed_transport_options_is_one_line_and_a_nonzero_exit(make_instance, command, value):
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{free_port()}\n"})
    env = {"MAILFLOW_BROKER_TRANSPORT_OPTIONS": value}
    if command == "worker":
        out = inst.run([sys.executable, "-m", "celery", "-A", "mailflow", "worker", "--pool", "solo"],
                       timeout=60, **env)
    elif command == "call":
        out = inst.run([sys.executable, "-m", "celery", "-A", "mailflow", "call",
                        "mailflow.flush_queue"], timeout=60, **env)
    else:
        args = [command] + (["-f", "a@b.example", "c@d.example"] if command == "send" else [])
        out = inst.run(inst.mailflow_argv(*args), input=b"x", timeout=60, **env)
    one_clear_line(out, "MAILFLOW_BROKER_TRANSPORT_OPTIONS")


@pytest.mark.parametrize("command", ["queue", "worker"])
def test_every_malformed_variable_is_one_line_each_and_a_nonzero_exit(make_instance, command):
    """At 7ff0849 ``MAILFLOW_LEASE_SECONDS=5m`` was a traceback while Celery loaded the app,
    and ``=0`` a renewal loop that never slept (issue 25 item 4)."""
    inst: Instance = make_instance()
    env = {"MAILFLOW_LEASE_SECONDS": "5m", "MAILFLOW_BATCH_MAX": "0", "MAILFLOW_PAYLOAD_MAX": "lots",
           "MAILFLOW_WEBHOOK_STALE_SECONDS": "-1", "FLOWER_PORT": "http"}
    if command == "worker":
        out = inst.run([sys.executable, "-m", "celery", "-A", "mailflow", "worker", "--pool", "solo"],
                       timeout=60, **env)
    else:
        out = inst.run(inst.mailflow_argv("queue", "stats"), timeout=60, **env)
    assert out.returncode == 2, out.stderr
    for name in env:
        one_clear_line(out, f"{name}=")
    lease = inst.run(inst.mailflow_argv("queue", "stats"), timeout=60, MAILFLOW_LEASE_SECONDS="0")
    one_clear_line(lease, "MAILFLOW_LEASE_SECONDS='0': must be")


@pytest.mark.parametrize("command", ["smtpd", "run"])
def test_a_taken_listen_address_is_one_line_and_a_nonzero_exit(make_instance, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{port}\n"})
        out = inst.mailflow(command, timeout=60)
    one_clear_line(out, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert b" ready." not in out.stdout + out.stderr  # `run` started no worker


#: A log line in text form: ours (``2026-11-30 15:33:34,707 INFO …``) or Celery's (``[2026-…``).
TEXT_LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def json_lines(text: str) -> list[dict]:
    """The log's lines as JSON objects; fails on any log line in text form.

    Lines that are not log lines at all -- ``run``'s "listening on" and "try:"
    announcements, Celery's "worker: Warm shutdown" notice (a print of its own) --
    are left out.
    """
    out = []
    for line in text.splitlines():
        assert not TEXT_LOG_LINE.match(line), f"a log line in text form: {line!r}"
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def delivery_setup(inst: Instance, dns: DNSServer) -> MXServer:
    dns.set_zones({"json.test": {"MX": [(10, "mx.json.test")]}, "mx.json.test": {"A": ["127.0.0.2"]}})
    inst.write_config("outbound.ini", f"nameservers = 127.0.0.1:{dns.port}\nmx_port = {MX_PORT}\n"
                      f"local_mx_ok = true\nqueue_dir = {inst.queue_dir}\n")
    return MXServer("127.0.0.2", MX_PORT).start()


def deliver_one_and_wait_for_its_log_line(inst: Instance, proc: Proc, server: MXServer) -> None:
    """Queue a message for json.test; return once ``proc`` has logged its delivery (as JSON)."""
    out = inst.mailflow("send", "-f", "a@sender.test", "u@json.test", input=b"Subject: j\n\nx\n")
    assert out.returncode == 0, out.stderr
    server.wait_for(1)
    until(lambda: any(e.get("event") == "delivered" for e in json_lines(proc.output())), 30,
          lambda: proc.output()[-3000:])


def test_run_with_json_logs_gives_json_for_every_process(make_instance, dns_server):
    port = free_port()
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{port}\n"})
    server = delivery_setup(inst, dns_server)
    try:
        proc = inst.spawn("run", inst.mailflow_argv("--log-format", "json", "run"))
        proc.wait_for_output(" ready.", timeout=60)
        deliver_one_and_wait_for_its_log_line(inst, proc, server)
        proc.stop()
        loggers = {e["logger"] for e in json_lines(proc.output())}
        assert {"mailflow.queue.manager", "mailflow.events", "celery.app.trace"} <= loggers  # both processes
    finally:
        server.stop()


def test_celery_worker_itself_honours_the_json_format(make_instance, dns_server):
    inst: Instance = make_instance()
    server = delivery_setup(inst, dns_server)
    try:
        worker = inst.start_worker(env={"MAILFLOW_LOG_FORMAT": "json"})
        deliver_one_and_wait_for_its_log_line(inst, worker, server)
        [delivered] = [e for e in json_lines(worker.output()) if e.get("event") == "delivered"]
        assert delivered["domain"] == "json.test" and delivered["rcpts"] == "1/0/0"
    finally:
        server.stop()


@pytest.mark.parametrize("broken", ["garbage", "directory"])
def test_an_unusable_tls_key_is_file_what_is_wrong(make_instance, tls_ca, broken):
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{free_port()}\n"})
    cert = tls_ca.issue_cert("mailflow.test")
    cert.cert_chain_pems[0].write_to_path(str(inst.config_dir / "tls_cert.pem"))
    key = inst.config_dir / "tls_key.pem"
    if broken == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    else:
        key.mkdir()
    out = inst.mailflow("smtpd", timeout=30)
    one_clear_line(out, f"{key}: cannot load the TLS key")


def test_a_plugin_that_exits_at_import_stops_the_process_nonzero(make_instance):
    inst: Instance = make_instance(config={"smtp.ini": f"listen = 127.0.0.1:{free_port()}\n"})
    (inst.config_dir / "quitter.py").write_text("raise SystemExit(0)\n")
    inst.write_config("plugins", "quitter\n")
    out = inst.mailflow("smtpd", timeout=30)
    one_clear_line(out, f"{inst.config_dir / 'plugins'}:1: cannot import plugin 'quitter': SystemExit")


def test_queue_show_and_list_never_send_terminal_escapes(make_instance):
    inst: Instance = make_instance()
    out = inst.mailflow("send", "-f", "a@sender.example", "b@dest.example",
                        input=b"Subject: \x1b[2J\x1b]0;owned\x07 hello\n\nbody\n")
    assert out.returncode == 0, out.stderr
    ident = out.stdout.decode().split("(")[1].rstrip(")\n")
    shown = inst.mailflow("queue", "show", ident)
    listed = inst.mailflow("queue", "list")
    for done in (shown, listed):
        assert done.returncode == 0, done.stderr
        assert b"\x1b" not in done.stdout and b"\x07" not in done.stdout
    assert b"Subject: \\x1b[2J\\x1b]0;owned\\x07 hello" in shown.stdout
    assert b"body" not in shown.stdout.split(b"hello", 1)[1]  # headers only, as postcat -h
    whole = inst.mailflow("queue", "show", "--body", ident)  # the message too, as postcat -b
    assert whole.returncode == 0 and whole.stdout.rstrip().endswith(b"body")


def test_a_worker_has_a_thread_for_each_delivery_concurrency_max_allows(make_instance):
    """A transmit holds a thread for its batch: 16 threads meant 16 slow receivers at most."""
    inst: Instance = make_instance()
    inst.write_config("outbound.ini", "concurrency_max = 30\n")
    sized = inst.start_worker("sized", concurrency=None)
    assert "concurrency: 38 (thread)" in sized.output()  # 30, and 8 for the other steps
    told = inst.start_worker("told", concurrency=5)
    assert "concurrency: 5 (thread)" in told.output()  # --concurrency still decides
