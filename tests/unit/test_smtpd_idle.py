"""The submission server's idle timeout (aiosmtpd's, kept with one timer per connection
rather than one per command: smtpd/server.py ``_reset_timeout``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mailflow.config.loader import Config
from mailflow.smtpd.guessing import Guesses
from mailflow.smtpd.limits import Connections
from mailflow.smtpd.server import MailflowSMTP

TIMEOUT = 0.5  #: seconds without a command before the server closes the connection


class Nothing:
    """A handler with no hooks: NOOP and QUIT are all the test sends."""


def test_a_busy_connection_outlives_the_timeout_and_an_idle_one_is_closed(tmp_path: Path):
    async def go() -> None:
        cfg = Config(tmp_path)
        made: list[Any] = []

        def ours() -> MailflowSMTP:
            made.append(MailflowSMTP(Nothing(), cfg=cfg, connections=Connections(10, 10),  # type: ignore[arg-type]
                                     guesses=Guesses(10, 600.0, tmp_path / "auth.json"), timeout=TIMEOUT))
            return made[-1]

        loop = asyncio.get_running_loop()
        server = await loop.create_server(ours, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await reader.readline()).startswith(b"220")
            start = loop.time()
            while loop.time() - start < 3 * TIMEOUT:  # a command every tenth of the timeout
                writer.write(b"NOOP\r\n")
                assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"250")
                await asyncio.sleep(TIMEOUT / 10)
            idle_from = loop.time()
            assert await asyncio.wait_for(reader.read(), 20 * TIMEOUT) == b""  # the server closed it
            assert loop.time() - idle_from >= TIMEOUT / 2  # after the last command, not the first
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(go())
