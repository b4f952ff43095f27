"""DSN (RFC 3461) end to end (issue 29 item 1): a mail client's RET, ENVID, NOTIFY and ORCPT
are taken at the listener, kept, passed to a next hop that offers DSN, and honoured in the
notices mailflow writes: a failure notice with the fields the client gave (headers only for
RET=HDRS), none for NOTIFY=NEVER, and one delay notice after delay_warning."""

from __future__ import annotations

import email
import email.policy
import smtplib
import uuid as uuidlib
from email.message import Message

from mailflow import config as configmod
from mailflow import outbound
from mailflow.codes import DENY, OK
from tests.support.pipeline import Env, module_env, with_listener

env = module_env("dsn", setup=with_listener)


def client(env: Env) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30)  # type: ignore[attr-defined]


def submit(c: smtplib.SMTP, rcpt: str, rcpt_options: list[str], body: bytes,
           mail_options: list[str] | None = None) -> str:
    """One message over an open session; its queue id (from the 250)."""
    assert c.mail("a@sender.test", mail_options or [])[0] == 250
    assert c.rcpt(rcpt, rcpt_options)[0] == 250
    code, text = c.data(body)
    assert code == 250, text
    return text.decode().split("(")[1].rstrip(")")


def notices(server, kind: str, about: str) -> list[Message]:
    """Notices to the sender (a@sender.test, whose MX is the same server) about ``about``, of
    ``kind`` (failed, delayed), parsed."""
    found = []
    for d in server.deliveries:
        if d.rcpt_to == ["a@sender.test"] and about.encode() in d.data:
            msg = email.message_from_bytes(d.data, policy=email.policy.compat32)
            if f"Action: {kind}".encode() in d.data:
                found.append(msg)
    return found


def report_fields(msg: Message) -> list[Message]:
    [status] = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    return [b for b in status.get_payload() if isinstance(b, Message)]


def test_the_listener_offers_dsn_and_checks_its_parameters(env: Env):
    with client(env) as c:
        code, features = c.ehlo()
        assert code == 250 and b"DSN" in features.split(b"\n")[-2:] + features.split(b"\n")
        for mail, rcpt, expected in (
                ("RET=SOMETIMES", "", 501), ("ENVID=bad=xtext", "", 501), ("NOTIFY=NEVER", "", 555),
                ("RET=HDRS RET=FULL", "", 501), ("", "NOTIFY=SOMETIMES", 501),
                ("", "NOTIFY=NEVER,FAILURE", 501), ("", "ORCPT=nosemicolon", 501),
                ("", "RET=HDRS", 555), ("", "FOO=1", 555)):
            c.rset()
            code, _ = c.docmd(f"MAIL FROM:<a@sender.test> {mail}".strip())
            if code == 250:
                code, _ = c.docmd(f"RCPT TO:<x@dest.test> {rcpt}".strip())
            assert code == expected, (mail, rcpt, code)
        c.rset()
        code, text = c.docmd("MAIL FROM:<a@sender.test> XFOO=1")
        assert (code, text) == (555, b"5.5.4 XFOO parameter not recognized or not implemented")
        code, text = c.docmd("MAIL FROM:<a@sender.test> XBARE")
        assert (code, text) == (555, b"5.5.4 XBARE parameter not recognized or not implemented")


def test_a_failure_notice_quotes_envid_and_orcpt_as_given_and_ret_hdrs_sends_headers_only(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    gone = f"gone-{tag}@dest.test"
    server = mx(rcpt={gone: "550 5.1.1 no such user"})
    with client(env) as c:
        c.ehlo()
        c.sendmail("a@sender.test", [gone], f"Subject: {tag}\r\n\r\nthe body {tag}-body\r\n".encode(),
                   mail_options=["RET=HDRS", f"ENVID=Env+2BId-{tag}"],
                   rcpt_options=["NOTIFY=FAILURE,DELAY", f"ORCPT=rfc822;Gone+2BMixed-{tag}@Dest.Test"])
    [notice] = env.wait(lambda: notices(server, "failed", gone), 60)
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    per_message, per_rcpt = report_fields(notice)
    assert per_message["Original-Envelope-Id"] == f"Env+Id-{tag}"  # xtext decoded, case kept
    assert per_rcpt["Original-Recipient"] == f"rfc822;Gone+Mixed-{tag}@Dest.Test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    kinds = [p.get_content_type() for p in notice.get_payload()]
    assert kinds[-1] == "text/rfc822-headers"  # RET=HDRS: no body
    raw = [d.data for d in server.deliveries if d.rcpt_to == ["a@sender.test"] and gone.encode() in d.data]
    assert f"{tag}-body".encode() not in raw[0]


def test_notify_never_sends_no_failure_notice(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    quiet, told = f"quiet-{tag}@dest.test", f"told-{tag}@dest.test"
    server = mx(rcpt={quiet: "550 5.1.1 no such user", told: "550 5.1.1 no such user"})
    with client(env) as c:
        c.ehlo()
        c.sendmail("a@sender.test", [quiet], f"Subject: {tag}\r\n\r\nhi\r\n".encode(),
                   rcpt_options=["NOTIFY=NEVER"])
        c.sendmail("a@sender.test", [told], f"Subject: {tag}\r\n\r\nhi\r\n".encode())  # the default: told
    env.wait(lambda: notices(server, "failed", told), 60)
    env.wait(lambda: env.logged("reason=\"NOTIFY: no failure notice asked for"), 30)
    assert not notices(server, "failed", quiet)


def test_the_parameters_go_on_to_a_next_hop_that_offers_dsn(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"on-{tag}@dest.test"
    server = mx(dsn=True)
    with client(env) as c:
        c.ehlo()
        uid = submit(c, rcpt, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{rcpt}"],
                     b"Subject: on\r\n\r\nhi\r\n", ["RET=FULL", f"ENVID=id-{tag}"])
    [seen] = env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == [rcpt]], 60)
    assert "RET=FULL" in seen.mail_options and f"ENVID=ID-{tag.upper()}" in seen.mail_options
    assert "NOTIFY=SUCCESS,FAILURE" in seen.rcpt_options
    assert f"ORCPT=RFC822;{rcpt.upper()}" in seen.rcpt_options  # aiosmtpd records them upper-cased
    # the next hop took the duty over: mailflow sends no success notice of its own
    env.wait(lambda: env.logged(f"delivered id={uid}"), 30)
    assert not env.logged(f"notified id={uid}")


def test_notify_success_to_a_next_hop_without_dsn_gets_a_relayed_notice(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    rcpt, quiet = f"ok-{tag}@dest.test", f"quiet-{tag}@dest.test"
    server = mx()
    with client(env) as c:
        c.ehlo()
        c.sendmail("a@sender.test", [rcpt, quiet], f"Subject: {tag}\r\n\r\nbody-{tag}\r\n".encode(),
                   mail_options=[f"ENVID=e-{tag}"], rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    [notice] = env.wait(lambda: notices(server, "relayed", rcpt), 60)
    per_message, *blocks = report_fields(notice)
    assert per_message["Original-Envelope-Id"] == f"e-{tag}"
    assert sorted(b["Final-Recipient"] for b in blocks) == sorted(f"rfc822; {r}" for r in (rcpt, quiet))
    assert all(b["Status"].startswith("2.") and b["Action"] == "relayed" for b in blocks)
    assert f"body-{tag}".encode() not in notice.as_bytes()  # headers only
    assert not [d for d in server.deliveries if d.rcpt_to == ["a@sender.test"]
                and f"body-{tag}".encode() in d.data]


def test_one_delay_notice_after_delay_warning(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    slow, never = f"slow-{tag}@dest.test", f"never-{tag}@dest.test"
    server = mx(rcpt={slow: "450 4.2.1 try later", never: "450 4.2.1 try later"})
    env.configure(delay_warning="1s", temp_fail_intervals="5s, 5s, 5s, 1h")
    body = f"Subject: {tag}\r\n\r\nhi\r\n".encode()
    with client(env) as c:
        c.ehlo()
        ids = [submit(c, slow, [f"ORCPT=rfc822;{slow}"], body),
               submit(c, never, ["NOTIFY=FAILURE"], body)]  # no DELAY: no delay notice

    def tried(times: int) -> bool:
        return all(e.num_failures >= times for i in ids for e in env.entries("pending", i)) and \
            all(env.entries("pending", i) for i in ids)
    [notice] = env.wait(lambda: notices(server, "delayed", slow), 60)
    env.wait(lambda: tried(3), 60)  # deferred again since: still one notice
    assert len(notices(server, "delayed", slow)) == 1
    assert not notices(server, "delayed", never)
    _, per_rcpt = report_fields(notice)
    assert per_rcpt["Action"] == "delayed" and per_rcpt["Original-Recipient"] == f"rfc822;{slow}"
    assert per_rcpt["Status"] == "4.2.1"


def test_send_email_takes_the_same_options(env: Env, mx):
    tag = uuidlib.uuid4().hex[:8]
    quiet = f"api-quiet-{tag}@dest.test"
    mx(rcpt={quiet: "550 5.1.1 no such user"})
    configmod.load(env.inst.config_dir)
    code, text = outbound.send_email("a@sender.test", [quiet], "Subject: x\n\nhi\n", dsn={"ret": "ALL"})
    assert code is DENY and "RET" in text
    code, text = outbound.send_email("a@sender.test", [quiet], "Subject: x\n\nhi\n",
                                     dsn={"notify": "NEVER", "envid": f"py-{tag}"})
    assert code is OK, text
    uid = text.split("(")[1].rstrip(")")
    env.wait(lambda: env.logged(f"dropped id={uid}") and
             env.logged("reason=\"NOTIFY: no failure notice asked for"), 60)
