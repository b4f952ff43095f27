"""mailflow's DATA against stock aiosmtpd's, fed the same bytes in the same chunks.

mailflow replaces aiosmtpd's ``smtp_DATA`` whole (a block-wise reader: aiosmtpd's reads a
line at a time), so a fix aiosmtpd makes there -- its 1.4.5 smuggling fix was one -- would
not reach mailflow by itself.  Here both servers run on loopback, one stock ``SMTP`` and one
``MailflowSMTP``, each with a handler that keeps what DATA received; every message of a
corpus of end-of-data tricks (bare LF and CR around the dot, dot-stuffing, long lines, a
body over the size limit, commands smuggled after a false end) is sent to both, split at
every byte (and in random runs of chunks), each chunk received by the server before the
next is sent.  The replies and the bodies must be the same, every time.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from mailflow.config.loader import Config
from mailflow.smtpd.data import LINE_LIMIT, has_long_line
from mailflow.smtpd.guessing import Guesses
from mailflow.smtpd.limits import Connections
from mailflow.smtpd.server import MailflowSMTP
from mailflow.smtpd.statuscodes import AIOSMTPD_REPLIES

LIMIT = 300  #: data_size_limit of both servers: the corpus has bodies over it

SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged\r\n"
CORPUS = [
    b"Subject: s\r\n\r\nhello\r\n.\r\n",
    b"..leading\r\nend.\r\n..\r\nlast.\r\n.\r\n",
    b".\r\n",
    *[b"hello" + trick + SMUGGLED + b".\r\n"
      for trick in (b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r")],
    b"a\rb\nc\r\r\n\n.\r\n.\r\n",  # bare CR and LF inside lines, and a dot line after a bare LF
    b"x" * 1002 + b"\r\n.\r\n",  # a line over the limit: 500, the rest still read
    b"y" * 999 + b"\r\n.\r\n",  # at the limit: taken
    b"z\r\n" * 120 + b".\r\n",  # over data_size_limit: 552
]
AFTER = b"NOOP\r\nQUIT\r\n"  #: what follows the end of data: both must see it as commands


class Kept:
    """A handler that keeps each DATA's body (stock: the envelope's; mailflow: its Body)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        body = getattr(envelope, "mf_body", None)
        self.bodies.append(body.read() if body is not None else envelope.content)
        return "250 OK"


class Counting:
    """Counts the bytes the server has received, so the client sends the next chunk after."""

    received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)  # type: ignore[misc]


class StockServer(Counting, SMTP):
    pass


class OurServer(Counting, MailflowSMTP):
    pass


async def session(port: int, made: list[Any], chunks: list[bytes]) -> list[bytes]:
    """One transaction: the envelope, then the chunks one by one; every reply line after 354."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # banner
    writer.write(b"HELO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    while not (await reader.readline()).startswith(b"354"):
        pass
    server = made[-1]
    sent = server.received
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)
        while server.received < sent:  # this chunk is the server's before the next is sent
            await asyncio.sleep(0)
    replies = []
    while line := await asyncio.wait_for(reader.readline(), 10):
        replies.append(line.rstrip(b"\r\n"))
    writer.close()
    return replies


def chunkings(message: bytes) -> list[list[bytes]]:
    """Every split in two (every split near the end of data for a long message), and random
    runs of up to eight chunks."""
    whole = message + AFTER
    points = range(1, len(whole)) if len(whole) <= 200 else \
        [*range(1, 40), *range(len(message) - 40, len(whole))]
    out = [[whole[:i], whole[i:]] for i in points]
    rng = random.Random(len(message))
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(whole)), min(7, len(whole) - 1)))
        out.append([whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)])
    return out


@pytest.mark.parametrize("message", CORPUS, ids=lambda m: repr(m[:24]))
def test_mailflow_reads_data_as_stock_aiosmtpd_does_however_it_is_chunked(message, tmp_path: Path):
    async def go() -> None:
        stock_kept, our_kept = Kept(), Kept()
        stock_made: list[Any] = []
        our_made: list[Any] = []
        cfg = Config(tmp_path)

        def stock() -> StockServer:
            stock_made.append(StockServer(stock_kept, decode_data=False, data_size_limit=LIMIT))
            return stock_made[-1]

        def ours() -> OurServer:
            our_made.append(OurServer(
                our_kept, cfg=cfg, connections=Connections(100, 100),
                guesses=Guesses(10, 600.0, tmp_path / "auth.json"), decode_data=False,
                data_size_limit=LIMIT))
            return our_made[-1]

        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(factory, "127.0.0.1", 0) for factory in (stock, ours)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        try:
            for chunks in chunkings(message):
                before = (len(stock_kept.bodies), len(our_kept.bodies))
                # mailflow words some of aiosmtpd's replies its own way (with enhanced codes)
                want = [AIOSMTPD_REPLIES.get(line.decode(), line.decode()).encode()
                        for line in await session(ports[0], stock_made, chunks)]
                got = await session(ports[1], our_made, chunks)
                assert got == want, (chunks, want, got)
                assert stock_kept.bodies[before[0]:] == our_kept.bodies[before[1]:], chunks
                assert want[-1].startswith(b"221")  # QUIT was read as a command by both
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()

    asyncio.run(go())


def test_long_lines_are_found_as_splitting_at_every_crlf_finds_them():
    """``has_long_line`` looks a window at a time; splitting the lines out is the reference."""
    rnd = random.Random(1001)
    lengths = (0, 1, 5, 997, 998, 999, 1000, 1001, 1500)
    for _ in range(50_000):
        body = b"".join(rnd.choice([b"\r\n", b"\r", b"\n", b"a" * rnd.choice(lengths),
                                    b"x" * rnd.randint(0, 40)]) for _ in range(rnd.randint(0, 6)))
        for limit in (LINE_LIMIT, 10, 3):
            expected = max(map(len, body.split(b"\r\n")), default=0) + 2 > limit
            assert has_long_line(body, limit) == expected, (body[:60], limit)
