"""Reports sent back (issue 28 item 4): mail leaves from a VERP return path; a complaint (ARF)
fed to ``mailflow ingest`` or a late bounce (DSN) sent to the inbound listener is matched to
its original, suppresses the recipient, and fires ``complained``/``bounced`` with the
original's tenant and campaign; a report that quotes only the Message-ID is matched too."""

from __future__ import annotations

import json
import smtplib
import uuid as uuidlib
from typing import Any

import pytest

from harness.dnsserver import free_port
from harness.httpsserver import Answer, HTTPSServer
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE
from tests.support.pipeline import Env, module_env

VERP = "bounces.test"
HOOK_IP = "127.0.0.6"


def _setup(env: Env) -> None:
    hooks = HTTPSServer(HOOK_IP, free_port(HOOK_IP)).start()
    hooks.routes[HOOK_IP] = Answer("ok")
    env.hooks = hooks  # type: ignore[attr-defined]
    env.inst.write_config("webhooks.ini", f"[app]\nurl = http://{HOOK_IP}:{hooks.port}/hook\n"
                          "events = complained, bounced\nsecret = whsec_c2VjcmV0c2VjcmV0c2VjcmV0\n")
    port = free_port()
    env.inst.write_config("inbound.ini", f"listen = 127.0.0.1:{port}\n")
    env.inst.start_smtpd()  # the submission process serves the inbound listener too
    env.inbound_port = port  # type: ignore[attr-defined]
    for proc in [p for p in env.inst.procs if p.name.startswith("worker")]:  # read at start
        proc.stop()
        env.inst.procs.remove(proc)
    env.inst.start_worker("deliver")


env = module_env("feedback", base={"verp_domain": VERP}, setup=_setup)


@pytest.fixture(scope="module", autouse=True)
def _hooks_stopped(env: Env):
    yield
    env.hooks.stop()  # type: ignore[attr-defined]


def events_of(env: Env, kind: str, rcpt: str) -> list[dict[str, Any]]:
    found = [json.loads(r.body) for r in env.hooks.requests if r.method == "POST"]  # type: ignore[attr-defined]
    return [e for e in found if e["type"] == f"message.{kind}" and rcpt in e["data"]["rcpt_to"]]


def delivered_from(env: Env, server: Any, rcpt: str) -> str:
    """The envelope sender the MX saw for the message to ``rcpt``."""
    [seen] = env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == [rcpt]], 60)
    return seen.mail_from


def arf(to: str, original_headers: str) -> bytes:
    return (f"From: <fbl@isp.test>\nTo: <{to}>\nSubject: complaint\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\n\n"
            "--b1\nContent-Type: text/plain\n\nA user marked this as spam.\n\n"
            "--b1\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
            "User-Agent: ISP-FBL/2.0\nVersion: 1\n\n"
            f"--b1\nContent-Type: text/rfc822-headers\n\n{original_headers}\n"
            "--b1--\n").replace("\n", "\r\n").encode()


def dsn(to: str, rcpt: str) -> bytes:
    return (f"From: MAILER-DAEMON@mx.dest.test\nTo: <{to}>\nSubject: Undelivered Mail\n"
            "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
            "boundary=\"b2\"\n\n--b2\nContent-Type: text/plain\n\nYour message could not be "
            "delivered.\n\n--b2\nContent-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.dest.test\n\n"
            f"Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: 5.1.1\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\n\n"
            "--b2--\n").replace("\n", "\r\n").encode()


def suppressed(env: Env, rcpt: str) -> str | None:
    """The suppression list's reason for ``rcpt``, None when it is not on it."""
    done = env.inst.mailflow("suppress", "list", "--json")
    for row in json.loads(done.stdout or b"[]"):
        if row["address"] == rcpt:
            return str(row["reason"])
    return None


def test_a_complaint_through_ingest_suppresses_and_fires_complained_with_the_tenant(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"c-{tag}@dest.test"
    server = mx()
    uuid = env.send(rcpt, notes={TENANT_NOTE: "acme", CAMPAIGN_NOTE: "spring"})
    sender = delivered_from(env, server, rcpt)
    assert sender.startswith(f"b+{uuid}.t") and sender.endswith(f"=c-{tag}=dest.test@{VERP}")
    done = env.inst.mailflow("ingest", "-", input=arf(sender, "From: a@sender.test\nSubject: x\n"))
    assert done.returncode == 0, done.stderr
    assert "complaint:" in done.stdout.decode() and rcpt in done.stdout.decode()
    assert suppressed(env, rcpt) == "complaint"
    [event] = env.wait(lambda: events_of(env, "complained", rcpt), 30)
    data = event["data"]
    assert (data["tenant"], data["campaign"], data["feedback_type"]) == ("acme", "spring", "abuse")
    assert data["id"].startswith(uuid) and data["mail_from"] == "a@sender.test"
    assert f"complained id={data['id']} rcpt={rcpt} type=abuse" in done.stderr.decode()  # its log
    # suppressed from now on: the next message to it is refused at the door
    again = env.inst.mailflow("send", "-f", "a@sender.test", rcpt, input=b"Subject: again\n\nhi\n")
    assert again.returncode != 0


def test_a_late_bounce_to_the_inbound_listener_bounces_and_suppresses_its_recipient(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"gone-{tag}@dest.test"
    server = mx()
    env.send(rcpt, notes={TENANT_NOTE: "acme"})
    sender = delivered_from(env, server, rcpt)
    with smtplib.SMTP("127.0.0.1", env.inbound_port, timeout=30) as client:  # type: ignore[attr-defined]
        code, _ = client.rcpt("nobody@elsewhere.test") if client.ehlo() and client.mail("") else (0, b"")
        assert code == 550  # reports for the VERP domain only
        client.rset()
        client.sendmail("", [sender], dsn(sender, rcpt))  # a 250 from the listener, or it raises
    assert suppressed(env, rcpt).startswith("5.1.1 ")  # type: ignore[union-attr]
    [event] = env.wait(lambda: events_of(env, "bounced", rcpt), 30)
    data = event["data"]
    assert data["late"] is True and data["status"] == "5.1.1" and data["bounce_class"] == "InvalidRecipient"
    assert data["tenant"] == "acme"
    assert env.logged(f"rcpt={rcpt} status=5.1.1")


def test_a_report_that_quotes_only_the_message_id_is_matched_by_it(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"m-{tag}@dest.test"
    server = mx()
    body = f"Message-ID: <own-{tag}@sender.test>\nSubject: hi\n\nhello\n"
    env.send(rcpt, body=body, notes={CAMPAIGN_NOTE: "autumn"})
    delivered_from(env, server, rcpt)
    report = arf("fbl-reports@isp.test", f"From: a@sender.test\nMessage-ID: <own-{tag}@sender.test>\n")
    done = env.inst.mailflow("ingest", input=report)
    assert done.returncode == 0 and rcpt in done.stdout.decode()
    [event] = env.wait(lambda: events_of(env, "complained", rcpt), 30)
    assert event["data"]["campaign"] == "autumn"


def test_what_is_not_a_report_is_refused_and_an_unknown_one_only_logged(env: Env):
    done = env.inst.mailflow("ingest", input=b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n")
    assert done.returncode == 65 and b"not a report" in done.stderr
    with smtplib.SMTP("127.0.0.1", env.inbound_port, timeout=30) as client:  # type: ignore[attr-defined]
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("", [f"x@{VERP}"], b"Subject: hi\r\n\r\nhello\r\n")
        assert caught.value.smtp_code == 554
    unknown = arf("fbl@isp.test", "From: a@sender.test\nMessage-ID: <never-sent@x.test>\n")
    done = env.inst.mailflow("ingest", input=unknown)
    assert done.returncode == 0 and b"no original found" in done.stdout
    assert b"unmatched report=complaint message_id=<never-sent@x.test>" in done.stderr


def test_a_forged_verp_address_suppresses_nobody(env: Env, mx):
    """The return path takes mail from anyone: an address naming an entry never queued, or an
    entry and someone who was not its recipient, matches nothing."""
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"real-{tag}@dest.test"
    server = mx()
    env.send(rcpt)
    sender = delivered_from(env, server, rcpt)
    victim = sender.replace(f"=real-{tag}=dest.test@", f"=victim-{tag}=dest.test@")
    never = "b+00000000-0000-0000-0000-000000000000.1=" + f"victim-{tag}=dest.test@{VERP}"
    for address in (victim, never):
        done = env.inst.mailflow("ingest", "-", input=arf(address, "From: a@sender.test\n"))
        assert done.returncode == 0 and b"no original found" in done.stdout, done.stdout
    assert suppressed(env, f"victim-{tag}@dest.test") is None
