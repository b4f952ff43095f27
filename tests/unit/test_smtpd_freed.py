"""A submission connection is freed when it ends, by reference counting alone.

aiosmtpd's protocol points back at itself (its command and AUTH tables hold methods
bound to it, its writer and the stream's callback name it, its ended task keeps the
frames that name it); left so, every connection is garbage for the cyclic collector,
which then runs every few messages over everything young.  The server drops those ties
when a connection has ended (smtpd/server.py ``_mf_forget``).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from pathlib import Path

from mailflow import config as configmod
from mailflow.smtpd import server as smtpd_server

REPO = Path(__file__).resolve().parents[2]
IDLE = 0.5  #: seconds without a command before the server closes a connection


def _config(tmp_path: Path) -> configmod.Config:
    shutil.copytree(REPO / "config", tmp_path, dirs_exist_ok=True)
    (tmp_path / "me").write_text("mailflow.test\n")
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    return configmod.load(tmp_path)


async def _say(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    reply = await asyncio.wait_for(reader.readline(), 10)
    while reply[3:4] == b"-":  # a multi-line reply: up to its last line
        reply = await asyncio.wait_for(reader.readline(), 10)
    return reply


def test_connections_that_ended_every_way_are_freed_without_the_cyclic_collector(tmp_path: Path):
    cfg = _config(tmp_path)
    made: list[weakref.ref[object]] = []

    async def go() -> None:
        factory = smtpd_server.protocol_factory(cfg, "127.0.0.1", None)

        def recorded() -> object:
            protocol = factory()
            protocol._timeout_duration = IDLE  # aiosmtpd's 300 s, shortened for the idle ending
            made.append(weakref.ref(protocol))
            return protocol

        loop = asyncio.get_running_loop()
        server = await loop.create_server(recorded, "127.0.0.1", 0)  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        try:
            for ending in ("quit", "quit", "dropped", "dropped in DATA", "idle"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert (await reader.readline()).startswith(b"220")
                assert (await _say(reader, writer, b"EHLO client.test\r\n")).startswith(b"250")
                assert (await _say(reader, writer, b"MAIL FROM:<a@client.test>\r\n")).startswith(b"250")
                await _say(reader, writer, b"RCPT TO:<b@elsewhere.test>\r\n")  # refused or not
                assert (await _say(reader, writer, b"RSET\r\n")).startswith(b"250")
                if ending == "quit":
                    assert (await _say(reader, writer, b"QUIT\r\n")).startswith(b"221")
                elif ending == "dropped in DATA":
                    await _say(reader, writer, b"MAIL FROM:<a@client.test>\r\n")
                    await _say(reader, writer, b"DATA\r\n")
                    writer.write(b"Subject: cut short\r\n")
                if ending == "idle":  # the server closes it once idle
                    assert await asyncio.wait_for(reader.read(), 30) == b""
                writer.close()
                await writer.wait_closed()
            deadline = loop.time() + 20
            while any(ref() is not None for ref in made) and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            server.close()
            await server.wait_closed()

    gc.collect()
    gc.disable()
    try:
        asyncio.run(go())
        alive = sum(ref() is not None for ref in made)
    finally:
        gc.enable()
    assert len(made) == 5
    assert alive == 0, f"{alive} of {len(made)} connections kept alive by reference cycles"
