"""A cheap SMTP injector, for machines without Postfix's ``smtp-source`` and for latency runs.

    python -m bench.ownsource HOST PORT --size BYTES (--messages N --sessions S | --rate R --duration D)
    python -m bench.ownsource HOST PORT --plan FILE --sessions S

Like ``smtp-source``, one connection per message.  ``--messages`` keeps S sessions
busy until N messages are sent (closed loop, for throughput); ``--rate`` starts
one message every 1/R seconds whatever the relay does (open loop, for latency).
Message *n* goes to ``r<n>@sink.test``; with ``--plan``, to the recipient of the
file's line *n* (``<recipient> <size>``, bench/mix.py), of that size.  On stdout:

    F <time>        the first connection is being opened
    Q <n> <time>    message n was answered 250 (it is queued)
    X <n> <error>   message n failed
    E <time>        all done
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"From: bench@sender.test\r\nSubject: bench\r\n\r\n" + line * max(1, size // len(line))


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            break
    if not line.startswith(code):
        raise RuntimeError(line.decode(errors="replace").strip())


DOMAINS = 0
#: --plan: each message's recipient and size
PLAN: list[tuple[str, int]] = []


def recipient(n: int) -> str:
    """``r<n>@sink.test``, or with ``--domains N`` ``r<n>@d<n % N>.sink.test``, or the plan's."""
    if PLAN:
        return PLAN[n][0]
    return f"r{n}@d{n % DOMAINS}.sink.test" if DOMAINS else f"r{n}@sink.test"


_BODIES: dict[int, bytes] = {}


def body_for(n: int, body: bytes) -> bytes:
    """The plan's size for message n, else ``body``."""
    if not PLAN:
        return body
    size = PLAN[n][1]
    if size not in _BODIES:
        _BODIES[size] = payload(size)
    return _BODIES[size]


async def send_one(host: str, port: int, n: int, body: bytes) -> None:
    body = body_for(n, body)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await expect(reader, b"220")
            for command, code in ((b"EHLO source.test", b"250"), (b"MAIL FROM:<bench@sender.test>", b"250"),
                                  (f"RCPT TO:<{recipient(n)}>".encode(), b"250"), (b"DATA", b"354")):
                writer.write(command + b"\r\n")
                await expect(reader, code)
            writer.write(body + b"\r\n.\r\n")
            await expect(reader, b"250")
            emit(f"Q {n} {time.time():.6f}")
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
    except Exception as exc:  # one failed message is reported, the run goes on
        emit(f"X {n} {type(exc).__name__}: {exc}")


async def closed_loop(host: str, port: int, messages: int, sessions: int, body: bytes) -> None:
    numbers = iter(range(messages))

    async def session() -> None:
        for n in numbers:
            await send_one(host, port, n, body)

    await asyncio.gather(*(session() for _ in range(sessions)))


async def open_loop(host: str, port: int, rate: float, duration: float, body: bytes) -> None:
    start = time.monotonic()
    tasks = []
    for n in range(int(rate * duration)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send_one(host, port, n, body)))
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--domains", type=int, default=0, help="spread recipients over N domains")
    parser.add_argument("--plan", help="each message's recipient and size, a line each")
    args = parser.parse_args()
    global DOMAINS
    DOMAINS = args.domains
    if args.plan:
        with open(args.plan) as f:
            PLAN.extend((rcpt, int(size)) for rcpt, size in (line.split() for line in f))
        args.messages = len(PLAN)
    body = payload(args.size)
    emit(f"F {time.time():.6f}")
    if args.rate:
        asyncio.run(open_loop(args.host, args.port, args.rate, args.duration, body))
    else:
        asyncio.run(closed_loop(args.host, args.port, args.messages or 1000, args.sessions, body))
    emit(f"E {time.time():.6f}")


if __name__ == "__main__":
    main()
