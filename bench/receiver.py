"""A webhook receiver for the benchmarks: its own process, asyncio, HTTP/1.1 keep-alive.

It stands for the application that takes mailflow's events, so its cost should be what a
production receiver's is (an event loop in C-backed I/O, the answer in one segment), not
that of Python's threaded http.server sharing the benchmark's process.  Every POST is
answered 200 and its events counted; ``GET /count`` answers the count.

    python -m bench.receiver PORT
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Counter:
    posts = 0


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path = head.split(b" ", 2)[:2]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == b"POST":  # an event, or (webhooks.ini batch) an array of them
                Counter.posts += body.count(b'"id":"msg_') if body.startswith(b"[") else 1
                writer.write(OK)
            elif path == b"/count":
                body = str(Counter.posts).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextmanager
def running(port: int) -> Iterator[Callable[[], int]]:
    """The receiver in its own process; yields a function answering how many events it took."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.receiver", str(port)])

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as answer:
            return int(answer.read())
    try:
        deadline = time.time() + 10
        while True:
            try:
                count()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        yield count
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
