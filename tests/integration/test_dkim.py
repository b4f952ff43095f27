"""DKIM signing (issue 15 item 1): every way in is signed once, and verifies with dkimpy against
TXT records served by the test DNS server; broken keys are found at start, or queue unsigned."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import uuid as uuidlib
from typing import Any

import dkim
import dns.resolver
import pytest

from harness.dnsserver import DNSServer
from harness.mxserver import MXServer
from mailflow.queue import counters
from tests.support.pipeline import ZONES, Env, module_env, with_listener

SIGNED = "sender.test"  # RSA and Ed25519
BOUNCER = "mailflow.test"  # `me`: bounces come From MAILER-DAEMON@mailflow.test; RSA only


def records(keygen_output: str) -> dict[str, str]:
    """{record name: TXT rdata text} from what `mailflow dkim keygen` printed."""
    out = {}
    for line in keygen_output.splitlines():
        if " IN TXT " in line:
            name, _, rdata = line.partition(" IN TXT ")
            out[name.rstrip(".")] = rdata.strip().removeprefix("(").removesuffix(")").strip()
    return out


def keygen(env: Env, domain: str, *extra: str) -> dict[str, str]:
    done = env.inst.mailflow("dkim", "keygen", domain, *extra)
    assert done.returncode == 0, done.stderr
    return records(done.stdout.decode())


def _keys_and_listener(e: Env) -> None:
    """Keys for both domains, their records in the test DNS, then the listener (which reads
    the keys when it starts)."""
    e.txt = {**keygen(e, SIGNED, "--selector", "s1", "--ed25519"),  # type: ignore[attr-defined]
             **keygen(e, BOUNCER, "--selector", "b1", "--bits", "1024")}
    publish(e)
    with_listener(e)


env = module_env("dkim", setup=_keys_and_listener)


def publish(env: Env, **override: Any) -> None:
    zones = dict(ZONES)
    for name, rdata in {**env.txt, **override}.items():  # type: ignore[attr-defined]
        if rdata is not None:
            zones[name] = {"TXT": [rdata]}
    env.dns.set_zones(zones)


def dns_txt(server: DNSServer):
    """dkimpy's dnsfunc, asking the test DNS server."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = ["127.0.0.1"], server.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = res.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return b""
        return b"".join(answer[0].strings)
    return lookup


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each top-level DKIM-Signature, in order."""
    d = dkim.DKIM(message)
    return [dkim.util.parse_tag_value(v) for k, v in d.headers if k.lower() == b"dkim-signature"]


def verified(env: Env, message: bytes) -> list[tuple[str, str]]:
    """(d=, a=) of every signature that verifies; asserts that each does."""
    out = []
    for idx, tags in enumerate(signatures(message)):
        ok = dkim.DKIM(message).verify(idx=idx, dnsfunc=dns_txt(env.dns))
        assert ok, (idx, tags)
        out.append((tags[b"d"].decode(), tags[b"a"].decode()))
    return out


def delivered(env: Env, server: MXServer, token: str) -> bytes:
    """The one message (not a bounce) with ``token`` in it, once it arrived."""
    [data] = env.wait(lambda: [d.data for d in server.deliveries
                               if token.encode() in d.data and d.mail_from not in ("", "<>")])
    return data


def body(token: str, sender: str = f"a@{SIGNED}") -> str:
    return (f"From: App <{sender}>\nTo: u@dest.test\nSubject: {token}\n"
            f"List-Unsubscribe: <mailto:unsub@{SIGNED}>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
            f"\nhello {token}\n.dot line\n")


BOTH = [(SIGNED, "rsa-sha256"), (SIGNED, "ed25519-sha256")]


@pytest.mark.parametrize("way", ["send_email", "smtp", "mailflow send", "mailflow sendmail"])
def test_every_way_in_is_signed_with_rsa_and_ed25519(env, mx, way):
    server = mx()
    token = uuidlib.uuid4().hex
    text = body(token)
    if way == "send_email":
        env.send("u@dest.test", body=text)
    elif way == "smtp":
        submit(env, text)
    elif way == "mailflow send":
        done = env.inst.mailflow("send", "-f", f"a@{SIGNED}", "u@dest.test", input=text.encode())
        assert done.returncode == 0, done.stderr
    else:
        done = env.inst.mailflow("sendmail", "-t", "-i", "-f", f"a@{SIGNED}", input=text.encode())
        assert done.returncode == 0, done.stderr
    message = delivered(env, server, token)
    assert verified(env, message) == BOTH
    [rsa, _] = signatures(message)
    signed = "".join(rsa[b"h"].decode().split()).lower().split(":")
    assert {"from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= set(signed)
    assert b"\r\n.dot line\r\n" in message  # signed as sent: unstuffed


def test_a_bounce_is_signed_by_the_bounce_senders_domain(env, mx):
    token = uuidlib.uuid4().hex
    server = mx(rcpt={f"gone-{token}@dest.test": "550 5.1.1 no such user"})
    env.send(f"gone-{token}@dest.test", body=body(token))
    [bounce] = env.wait(lambda: [d.data for d in server.deliveries
                                 if d.mail_from in ("", "<>") and token.encode() in d.data])
    assert verified(env, bounce) == [(BOUNCER, "rsa-sha256")]


def test_a_message_signed_already_is_not_signed_again(env, mx):
    server = mx()
    token = uuidlib.uuid4().hex
    env.send("u@dest.test", body=body(token))
    first = delivered(env, server, token)
    again = uuidlib.uuid4().hex
    env.send("u@dest.test", body=first.replace(b"Received:", f"X-Again: {again}\r\nReceived:".encode(), 1))
    second = delivered(env, server, again)
    assert verified(env, second) == BOTH  # the first pass's signatures, still good, and no more


def test_fallback_domain_signs_for_a_from_domain_without_a_key(env, mx):
    server = mx()
    try:
        env.inst.write_config("dkim.ini", f"fallback_domain = {SIGNED}\n")
        token = uuidlib.uuid4().hex
        env.send("u@dest.test", body=body(token, sender="a@keyless.test"))
        assert verified(env, delivered(env, server, token)) == BOTH
    finally:
        env.inst.write_config("dkim.ini", "")
    token = uuidlib.uuid4().hex
    env.send("u@dest.test", body=body(token, sender="a@keyless.test"))
    assert signatures(delivered(env, server, token)) == []  # no key, no fallback: unsigned


def submit(env: Env, text: str, sender: str = f"a@{SIGNED}") -> None:
    """Through the running smtpd."""
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as s:
        s.sendmail(sender, ["u@dest.test"], text.replace("\n", "\r\n"))


def test_a_key_broken_while_running_queues_unsigned_with_a_warning(env, mx):
    server = mx()
    private = env.inst.config_dir / "dkim" / SIGNED / "private"
    good = private.read_bytes()
    queue = env.inst.queue_dir
    before = counters.read(queue, "dkim_unsigned")
    try:
        private.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        token = uuidlib.uuid4().hex
        submit(env, body(token))
        assert signatures(delivered(env, server, token)) == []
        assert env.logged("WARNING mailflow.queue: queued unsigned id=")
        assert env.logged(f"DKIM key unusable: {private}: not a PEM private key")
        assert counters.read(queue, "dkim_unsigned") == before + 1
    finally:
        private.write_bytes(good)
    token = uuidlib.uuid4().hex
    submit(env, body(token))
    assert verified(env, delivered(env, server, token)) == BOTH  # read again once mended


def test_dkim_check_compares_the_published_record_with_the_key(env):
    ok = env.inst.mailflow("dkim", "check", SIGNED)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.decode().count(": ok") == 2
    other = keygen_elsewhere(env)
    try:
        publish(env, **{f"s1._domainkey.{SIGNED}": other})
        wrong = env.inst.mailflow("dkim", "check", SIGNED)
        assert wrong.returncode == 1
        assert "not this key" in wrong.stdout.decode()
        publish(env, **{f"s1._domainkey.{SIGNED}": None})
        missing = env.inst.mailflow("dkim", "check", SIGNED)
        assert missing.returncode == 1 and "not published" in missing.stdout.decode()
    finally:
        publish(env)


def keygen_elsewhere(env: Env) -> str:
    other = env.inst.root / "other"  # another installation's config directory
    other.mkdir(exist_ok=True)
    (other / "me").write_text("other.test\n")
    done = env.inst.mailflow("--config", str(other), "dkim", "keygen", SIGNED,
                             "--selector", "s1", "--bits", "1024")
    assert done.returncode == 0, done.stderr
    [rdata] = records(done.stdout.decode()).values()
    return rdata


def test_keygen_never_overwrites_a_key(env):
    done = env.inst.mailflow("dkim", "keygen", SIGNED, "--selector", "s2")
    assert done.returncode == 1
    assert "exists already" in done.stderr.decode()


@pytest.mark.parametrize("case", ["garbage", "ed25519-alone", "short-rsa"])
def test_a_broken_key_at_start_is_file_and_what_and_exit_non_zero(make_instance, case):
    inst = make_instance()
    d = inst.config_dir / "dkim" / "broken.test"
    d.mkdir(parents=True)
    if case == "garbage":
        (d / "selector").write_text("s1\n")
        (d / "private").write_text("not a key\n")
        expected = f"{d / 'private'}: not a PEM private key"
    elif case == "ed25519-alone":
        (d / "ed25519.selector").write_text("e1\n")
        (d / "ed25519.private").write_text("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n")
        expected = f"{d / 'private'}: missing: an Ed25519 key is used only beside an RSA key"
    else:
        (d / "selector").write_text("s1\n")  # cryptography makes no key this short: openssl does
        (d / "private").write_bytes(subprocess.run(["openssl", "genrsa", "512"], capture_output=True,
                                                   check=True).stdout)
        expected = "RSA key of 512 bits: at least 1024"
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0
    err = done.stderr.decode()
    assert expected in err and "Traceback" not in err, err


def test_a_malformed_dkim_ini_is_file_line_and_exit_non_zero(make_instance):
    inst = make_instance()
    inst.write_config("dkim.ini", "; signing\nheaders_to_sign = To, Subject\n")
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0
    assert f"{inst.config_dir / 'dkim.ini'}:2: headers_to_sign must include From" in done.stderr.decode()


def eight_bit_text(token: str, sender: str) -> str:
    return (f"From: App <{sender}>\nTo: u@dest.test\nSubject: {token}\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"Café crème {token} — ünïcode\nsecond line \n")


def decoded_text(message: bytes) -> str:
    found = email.message_from_bytes(message, policy=email.policy.default).get_content()
    return str(found).replace("\r\n", "\n")


def test_an_8bit_message_reaches_a_7bit_mx_as_quoted_printable_and_its_signature_verifies(env, mx):
    """Issue 29 item 3: a signed 8-bit message is made 7-bit before it is signed."""
    server = mx(eightbitmime=False)
    token = uuidlib.uuid4().hex
    text = eight_bit_text(token, f"a@{SIGNED}")
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as s:  # type: ignore[attr-defined]
        s.sendmail(f"a@{SIGNED}", ["u@dest.test"], text.replace("\n", "\r\n").encode(),
                   mail_options=["BODY=8BITMIME"])
    message = delivered(env, server, token)
    assert message.isascii() and b"Content-Transfer-Encoding: quoted-printable" in message
    assert decoded_text(message) == text.split("\n\n", 1)[1]
    assert verified(env, message) == BOTH


def test_an_unsigned_8bit_message_is_converted_only_for_a_next_hop_that_needs_it(env, mx):
    token = uuidlib.uuid4().hex
    text = eight_bit_text(token, "x@unsigned.test")
    seven = mx(eightbitmime=False)
    env.send("u@dest.test", body=text, sender="x@unsigned.test")
    message = delivered(env, seven, token)
    assert message.isascii() and not signatures(message)
    assert decoded_text(message) == text.split("\n\n", 1)[1]


def test_an_unsigned_8bit_message_goes_as_it_came_to_a_next_hop_offering_8bitmime(env, mx):
    eight = mx()
    token = uuidlib.uuid4().hex
    env.send("u@dest.test", body=eight_bit_text(token, "x@unsigned.test"), sender="x@unsigned.test")
    message = delivered(env, eight, token)
    assert "Café crème".encode() in message
    [seen] = [d for d in eight.deliveries if token.encode() in d.data]
    assert "BODY=8BITMIME" in seen.mail_options


def test_a_large_8bit_message_is_made_7bit_before_it_is_signed_too(env, mx):
    """Kept in a file rather than in memory (mailflow/queue/submission.py sign_file)."""
    server = mx(eightbitmime=False)
    token = uuidlib.uuid4().hex
    text = eight_bit_text(token, f"a@{SIGNED}") + "Café crème, encore une fois.\n" * 120_000
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as s:  # type: ignore[attr-defined]
        s.sendmail(f"a@{SIGNED}", ["u@dest.test"], text.replace("\n", "\r\n").encode(),
                   mail_options=["BODY=8BITMIME"])
    message = delivered(env, server, token)
    assert len(message) > 3_000_000 and message.isascii()
    assert decoded_text(message) == text.split("\n\n", 1)[1]
    assert verified(env, message) == BOTH
