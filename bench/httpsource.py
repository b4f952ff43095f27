"""An HTTP injector for the API: ``POST /api/inject/v1`` with many recipients a request.

    python -m bench.httpsource URL KEY --messages N --size BYTES --per-request R --clients C

C clients, each on one kept-alive connection (urllib3), send requests of R recipients
(one message each, a whole RFC 5322 message of BYTES as ``content``) until N messages are
sent.  Message *n* goes to ``r<n>@sink.test``.  On stdout, as bench/ownsource.py writes:

    F <time>        the first request is being sent
    Q <n> <time>    message n was answered (the request's 200)
    X <n> <error>   message n failed
    E <time>        all done
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import urllib3

from bench.ownsource import payload

_lock = threading.Lock()


def emit(lines: list[str]) -> None:
    with _lock:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()


def client(url: str, key: str, numbers: list[list[int]], content: str) -> None:
    pool = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(total=120))
    for batch in numbers:
        body = json.dumps({"envelope_sender": "bench@sender.test", "content": content,
                           "recipients": [{"email": f"r{n}@sink.test"} for n in batch]})
        try:
            answer = pool.request("POST", url, body=body.encode(), headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            now = time.time()
            if answer.status != 200:
                emit([f"X {n} HTTP {answer.status} {answer.data[:200]!r}" for n in batch])
                continue
            failed = set(json.loads(answer.data)["failed_recipients"])
            emit([f"X {n} refused" if f"r{n}@sink.test" in failed else f"Q {n} {now}" for n in batch])
        except Exception as exc:  # noqa: BLE001 -- a benchmark reports every failure and goes on
            emit([f"X {n} {exc}" for n in batch])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("key")
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--per-request", type=int, default=50)
    ap.add_argument("--clients", type=int, default=10)
    args = ap.parse_args()
    content = payload(args.size).decode()
    batches = [list(range(i, min(i + args.per_request, args.messages)))
               for i in range(0, args.messages, args.per_request)]
    shares: list[list[list[int]]] = [batches[c::args.clients] for c in range(args.clients)]
    emit([f"F {time.time()}"])
    threads = [threading.Thread(target=client, args=(args.url, args.key, share, content))
               for share in shares if share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit([f"E {time.time()}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
