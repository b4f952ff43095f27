"""An HTTP(S) server for tests: MTA-STS policy hosts, TLS-RPT and webhook receivers.

Answers are set per Host header (``routes[host] = Answer(...)``, or a list of them
used one request at a time, the last one for good): status, content type, body, an
optional delay before answering or a Location.  Every request is recorded (method,
host, path, headers, body, the status answered), so a test can read what a POST
carried.  Without a TLS context it serves plain HTTP.
"""

from __future__ import annotations

import contextlib
import socket
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
    trickle: float = 0.0  #: the body sent a byte at a time, this many seconds apart


@dataclass
class Request:
    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)
    status: int = 0  #: what was answered (0 while the answer is being held back)
    peer: int = 0  #: the client's port: requests with the same one came over one connection


class HTTPSServer:
    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None):
        self.host, self.port, self.context = host, port, context
        self.routes: dict[str, Answer | list[Answer]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[Any] = set()  #: sockets of the connections open now
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> HTTPSServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers offer
            # The answer in one segment, sent at once, as real servers do: unbuffered
            # writes under Nagle wait 40 ms for the client's delayed ACK on every request
            wbufsize = 65536
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._connections.add(self.connection)

            def finish(self) -> None:
                with outer._lock:
                    outer._connections.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                request = Request(self.command, host, self.path, dict(self.headers.items()), body,
                                  peer=self.client_address[1])
                with outer._lock:
                    outer.requests.append(request)
                    route = outer.routes.get(host, Answer(b"no such host", 404))
                    answer = (route.pop(0) if len(route) > 1 else route[0]) if isinstance(route, list) \
                        else route
                if answer.delay and outer._stopping.wait(answer.delay):
                    return  # the server is stopping: a hung answer ends with it
                data = answer.body.encode() if isinstance(answer.body, str) else answer.body
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    if answer.location:
                        self.send_header("Location", answer.location)
                    self.end_headers()
                    if answer.trickle:
                        self.wfile.flush()
                        for n in range(len(data)):
                            if outer._stopping.wait(answer.trickle):
                                return
                            self.wfile.write(data[n:n + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    self.close_connection = True
                    return
                request.status = answer.status

            do_GET = _serve
            do_POST = _serve

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        if self.context is not None:
            server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True, name="https").start()
        return self

    def stop(self) -> None:
        """Stop serving, and end every connection still open (a client's keep-alive one
        holds a handler thread waiting for its next request)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            open_now = list(self._connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def requested(self, host: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.host == host and r.method == method]
