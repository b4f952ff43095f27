"""A cheap SMTP sink, for machines without Postfix's ``smtp-sink`` and for latency runs.

    python -m bench.ownsink HOST[,HOST...] PORT [DELAY]

It accepts every command and throws the mail away.  It speaks just enough ESMTP
for mailflow's client (EHLO with PIPELINING, MAIL, RCPT, DATA, RSET, NOOP,
QUIT) and writes one line per event on stdout, which the benchmark reads:

    S <time>                a session began
    M <time> <recipient>    a message was received (its final "." read)

One asyncio process with no parsing beyond the command verb: it must cost far
less CPU than the relay it measures.  ``DELAY`` (seconds) holds back every reply
but the banner, as a distant or busy receiver does.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

EHLO = (b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n")
REPLIES = {
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"HELO": b"250 sink\r\n",
}


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


DELAY = 0.0


async def _skip_body(reader: asyncio.StreamReader) -> None:
    """Read the body up to its final dot and throw it away, however large it is (a body
    over the stream's limit is passed in pieces; what is kept back may start the dot)."""
    while True:
        try:
            await reader.readuntil(b"\r\n.\r\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    emit(f"S {time.time():.6f}")
    writer.write(b"220 sink ESMTP\r\n")
    rcpt = ""
    try:
        while line := await reader.readline():
            if DELAY:
                await asyncio.sleep(DELAY)
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(EHLO)
            elif verb == b"RCPT":
                rcpt = line[8:].strip().strip(b"<>").decode("ascii", "replace")
                writer.write(REPLIES[verb])
            elif verb == b"DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                await _skip_body(reader)
                emit(f"M {time.time():.6f} {rcpt}")
                if DELAY:
                    await asyncio.sleep(DELAY)
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            else:
                writer.write(REPLIES.get(verb, b"502 5.5.2 Error: command not recognized\r\n"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    hosts = host.split(",")  # several addresses: one destination each, as a relay sees them
    server = await asyncio.start_server(session, hosts if len(hosts) > 1 else host, port, backlog=1024,
                                        limit=1 << 20)
    emit(f"L {time.time():.6f}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a listener per address, and sessions
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
