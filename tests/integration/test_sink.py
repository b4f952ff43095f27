"""``mailflow sink`` (issue 24 item 2): a development server that keeps what it receives and
answers the replies it is told to, so that a first message arrives and a deferral and a
bounce can be tried on purpose -- here through routes.ini from a real worker."""

from __future__ import annotations

import email
import smtplib
import sys

import pytest

from harness.dnsserver import free_port
from tests.support.pipeline import module_env

env = module_env("sink")


@pytest.fixture(scope="module")
def sink(env):
    port = free_port()
    where = env.inst.root / "sink-mail"
    proc = env.inst.spawn("sink", [sys.executable, "-m", "mailflow", "sink", "--listen", f"127.0.0.1:{port}",
                                   "--dir", str(where), "--reply", "fail@*=550 5.1.1 no such user",
                                   "--reply", "slow@*=451 4.3.0 try later"])
    proc.wait_for_output(f"listening on 127.0.0.1:{port}")
    return proc, port, where


def test_the_sink_keeps_each_message_and_answers_its_replies(sink):
    proc, port, where = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        refused = client.sendmail("a@sender.test", ["ok@x.test", "fail@x.test", "slow@x.test"],
                                  b"Subject: hi there\r\n\r\nbody\r\n")
    assert {k: v[0] for k, v in refused.items()} == {"fail@x.test": 550, "slow@x.test": 451}
    out = proc.wait_for_output("subject='hi there'")
    line = next(x for x in out.splitlines() if "subject='hi there'" in x)
    assert line.startswith("received from=<a@sender.test> to=ok@x.test size=")
    [kept] = [p for p in where.glob("*.eml") if b"hi there" in p.read_bytes()]
    assert email.message_from_bytes(kept.read_bytes())["Subject"] == "hi there"


def test_a_message_routed_to_the_sink_arrives_and_the_others_defer_and_bounce(env, sink):
    proc, port, where = sink
    env.inst.write_config("routes.ini", f"[*]\nvia = 127.0.0.1:{port}\n")
    env.configure(temp_fail_intervals="1h")
    try:
        env.send("first@example.net", body="Subject: first message\n\nhello\n")
        proc.wait_for_output("subject='first message'")
        slow = env.send("slow@example.net")
        assert env.deferral(slow)["status"] == "4.3.0"
        env.send("fail@example.net", sender="me@example.net", body="Subject: doomed\n\nx\n")
        proc.wait_for_output("to=me@example.net")  # the bounce, routed to the sink as well
        bounce = next(p for p in where.glob("*.eml") if b"fail@example.net" in p.read_bytes()
                      and b"multipart/report" in p.read_bytes())
        assert b"Status: 5.1.1" in bounce.read_bytes()
    finally:
        env.inst.write_config("routes.ini", "")
        env.configure()
