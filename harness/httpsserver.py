"""An HTTPS server for tests: MTA-STS policy hosts and TLS-RPT report receivers.

Answers are set per Host header (``routes[host] = Answer(...)``): status, content
type, body, an optional delay before answering or a Location.  Every request is
recorded (method, host, path, headers, body), so a test can read what a POST
carried.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    body: bytes | str = b""
    status: int = 200
    content_type: str = "text/plain"
    delay: float = 0.0  #: seconds before anything is sent (a slow or hung server)
    location: str | None = None


@dataclass
class Request:
    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)


class HTTPSServer:
    def __init__(self, host: str, port: int, context: ssl.SSLContext):
        self.host, self.port, self.context = host, port, context
        self.routes: dict[str, Answer] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> HTTPSServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                with outer._lock:
                    outer.requests.append(Request(self.command, host, self.path,
                                                  dict(self.headers.items()), body))
                    answer = outer.routes.get(host, Answer(b"no such host", 404))
                if answer.delay:
                    time.sleep(answer.delay)
                data = answer.body.encode() if isinstance(answer.body, str) else answer.body
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(data)))
                if answer.location:
                    self.send_header("Location", answer.location)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True, name="https").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requested(self, host: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.host == host and r.method == method]
