"""Processes refuse to start half-configured; `mailflow run` is the newcomer's one command."""

from __future__ import annotations

import signal
import smtplib
import time

import pytest

from tests.support.dnsserver import free_port
from tests.support.instance import Instance


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
    from mailflow.hmail import HMail
    from mailflow.message import dot_unstuff

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
    from mailflow.hmail import HMail
    from mailflow.message import dot_unstuff

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
