"""What smtpd saves per connection and per command gives what aiosmtpd gave (issue 14):
its tables from names listed once per class (smtpd/tables.py), addresses parsed alike."""

from __future__ import annotations

import asyncio
import functools
import random
import tempfile
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from mailflow import config
from mailflow.smtpd.guessing import Guesses
from mailflow.smtpd.handler import SubmissionHandler
from mailflow.smtpd.limits import Connections
from mailflow.smtpd.server import MailflowSMTP, plain_path, protocol_factory


@functools.cache
def _config() -> config.Config:
    d = Path(tempfile.mkdtemp())
    (d / "outbound.ini").write_text(f"queue_dir = {d / 'queue'}\n")
    return config.Config(d)


def test_command_hook_and_auth_tables_are_those_a_full_dir_gives(tmp_path):
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "auth_flat_file.ini").write_text(
        "[core]\nmethods = PLAIN,LOGIN,CRAM-MD5\n[users]\nalice = secret\n")
    factory = protocol_factory(config.Config(tmp_path), "127.0.0.1", None)
    async def accepted() -> MailflowSMTP:  # as the loop calls it for a connection
        return factory()

    loop = asyncio.new_event_loop()
    try:
        first, server = loop.run_until_complete(accepted()), loop.run_until_complete(accepted())
    finally:
        loop.close()
    assert server.loop is loop
    every = object.__dir__(server)  # what dir() listed before
    assert sorted(server._smtp_methods) == sorted(m[5:] for m in every if m.startswith("smtp_"))
    handler = server.event_handler
    assert isinstance(handler, SubmissionHandler) and handler is first.event_handler
    assert sorted(server._handle_hooks) == sorted(
        m[7:] for m in object.__dir__(handler) if m.startswith("handle_"))
    assert sorted(server._auth_methods) == ["CRAM-MD5", "LOGIN", "PLAIN"]
    assert server._ehlo_hook_ver == "new"  # from handle_EHLO's signature, kept on it
    # given, not built (tables.py): the same methods, each bound to its own connection
    for name, method in server._smtp_methods.items():
        assert method.__self__ is server and method.__func__ is getattr(MailflowSMTP, "smtp_" + name)
    assert server._auth_methods["CRAM-MD5"].method.__self__ is server
    assert server._auth_methods["CRAM-MD5"].is_builtin
    assert all(hook.__self__ is handler for hook in server._handle_hooks.values())
    assert first._smtp_methods["DATA"].__self__ is first
    assert dir(server) == dir(first) != []  # listing works again once the tables are in


@pytest.mark.parametrize("arg", [
    "", "<>", "<a@b.example>", "<a@b.example> SIZE=100 BODY=8BITMIME", "a@b.example",
    "a@b.example SIZE=1", "<\"quoted local\"@b.example>", "<@route.example:a@b.example>",
    "<a@[127.0.0.1]>", "<a@b.example", "<<a@b.example>>", "a b@c", "<" + "x" * 65 + "@b.example>",
    "<" + "x" * 64 + "@b.example>", "  <a@b.example>", "<a@>", "<ü@b.example>",
    # the plain form's edges: what follows the path, dots, hyphens, every atext character
    "<a@b.example>x", "<a@b.example>(c) X=1", "<a@b.example> (c) X=1", "<a@b.example>\tSIZE=1",
    "<a@b.example>  ", "<a..b@c.example>", "<.a@c.example>", "<a.@c.example>", "<a@b..example>",
    "<a@-b.example>", "<a@b.example.>", "<A!#$%&'*+/=?^_`{|}~-@B-1.Example>", "<a@b.example> SIZE=1 ",
])
def test_addresses_parse_as_aiosmtpd_parses_them(arg):
    server = _server()
    assert server._parse_path(arg) == SMTP._getaddr(server, arg)


def test_the_plain_form_reads_as_the_full_parser_reads_it():
    """Random MAIL/RCPT arguments from the characters that matter at the fast path's edges:
    wherever it answers, aiosmtpd's own parsing gives the same answer; where aiosmtpd's
    crashes (the email package's parser raises IndexError on ``<-@``, AttributeError and
    UnboundLocalError on others), a syntax error."""
    rng = random.Random(26)
    atoms = ["a", "Z", "0", "-", "_", "+", "!", "~", ".", " ", "(", '"', "[", "é", "@", "<", ">", "\\"]
    tails = ["", " SIZE=1", "  BODY=8BITMIME ", "\tX=1", "x", " (c)", "(c) X=1", ">", " "]

    def part() -> str:
        pool = atoms[:6] if rng.random() < 0.7 else atoms
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, 6)))

    server, answered = _server(), 0
    for _ in range(20_000):
        arg = f"<{part()}@{part()}.{part()}>{rng.choice(tails)}"
        if rng.random() < 0.2:  # and a cut anywhere
            arg = arg[:rng.randint(1, len(arg))]
        if plain_path(arg) is not None:
            answered += 1
        try:
            expected = SMTP._getaddr(server, arg)
        except (IndexError, AttributeError, UnboundLocalError):
            expected = (None, None)
        assert server._parse_path(arg) == expected, arg
    assert answered > 100  # the fast path was taken often enough to mean something


def _server() -> MailflowSMTP:
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return MailflowSMTP(SubmissionHandler(_config()), cfg=_config(), connections=Connections(10, 10),
                            guesses=Guesses(10, 600, Path(tempfile.gettempdir()) / "auth-failures.json"))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_each_transaction_queues_the_addresses_its_own_mail_and_rcpt_gave(tmp_path):
    """MAIL and RCPT keep the addresses they parsed on the envelope for DATA to queue: two
    transactions on one connection (and a RSET between) queue each its own envelope."""
    import os

    from mailflow.queue import entry

    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "relay_acl_allow").write_text("127.0.0.1\n")
    cfg = config.Config(tmp_path)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory(cfg, "127.0.0.1", None), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])

        async def say(line: bytes) -> bytes:
            writer.write(line + b"\r\n")
            return await asyncio.wait_for(reader.readline(), 10)

        await reader.readline()
        await say(b"EHLO client.test")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        for sender, rcpts in ((b"a@one.test", (b"b@two.test", b"c@three.test")), (b"<>", (b"d@four.test",))):
            assert (await say(b"MAIL FROM:<x@never.test>")).startswith(b"250")
            assert (await say(b"RSET")).startswith(b"250")  # what MAIL gave is forgotten with it
            assert (await say(b"MAIL FROM:<" + sender.strip(b"<>") + b">")).startswith(b"250")
            for rcpt in rcpts:
                assert (await say(b"RCPT TO:<" + rcpt + b">")).startswith(b"250")
            assert (await say(b"DATA")).startswith(b"354")
            assert (await say(b"Subject: s\r\n\r\nbody\r\n.")).startswith(b"250")
        await say(b"QUIT")
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(go())
    found = set()
    for directory, _dirs, files in os.walk(tmp_path / "queue" / "pending"):
        for name in files:
            todo, _ = entry.load(Path(directory) / name)
            found.add((todo.mail_from.address, tuple(r.address for r in todo.rcpt_to)))
    assert found == {("a@one.test", ("b@two.test",)), ("a@one.test", ("c@three.test",)),
                     ("", ("d@four.test",))}
