"""A real DNS server on 127.0.0.1 at a spare port, serving zones given as data.

    zones = {
        "example.test": {"MX": [(10, "mx1.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "nullmx.test": {"MX": [(0, ".")]},
        "broken.test": SERVFAIL,
        "silent.test": NO_ANSWER,
    }

A name that is not in ``zones`` (and has no name below it) is NXDOMAIN; a
name with no record of the asked type answers NOERROR with no data.
Served over UDP and TCP on the same port, as resolvers expect.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

SERVFAIL = "SERVFAIL"
NO_ANSWER = "NO_ANSWER"
TTL = 300


class DNSServer:
    """Serve ``zones``; ``queries`` records every (name, type) asked, in order."""

    def __init__(self, zones: dict[str, Any] | None = None, host: str = "127.0.0.1"):
        self.zones: dict[str, Any] = {}
        self.queries: list[tuple[str, str]] = []
        self.host = host
        self.ttl = TTL  #: of every answer (0: a test that changes records sees them at once)
        self._lock = threading.Lock()
        self.set_zones(zones or {})
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None
        self.port = 0

    def set_zones(self, zones: dict[str, Any]) -> None:
        with self._lock:
            self.zones = {k.lower().rstrip("."): v for k, v in zones.items()}

    # -- answering -----------------------------------------------------------------

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            data = self.zones.get(name)
            exists = data is not None or any(k.endswith("." + name) for k in self.zones)
        if data == NO_ANSWER:
            return None
        if data == SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        records = (data or {}).get(rdtype, [])
        if records:
            texts = [self._rdata_text(rdtype, r) for r in records]
            response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *texts))
        return response.to_wire()

    @staticmethod
    def _rdata_text(rdtype: str, record: Any) -> str:
        if rdtype == "MX":
            pref, exchange = record
            exchange = exchange if exchange.endswith(".") else exchange + "."
            return f"{pref} {exchange}"
        if rdtype in ("CNAME", "PTR", "NS"):
            return record if record.endswith(".") else record + "."
        return str(record)

    # -- serving -------------------------------------------------------------------

    def start(self) -> DNSServer:
        server = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                data = b""
                while len(data) < length:
                    chunk = self.request.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = server.answer(data)
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        for _ in range(20):
            udp = socketserver.ThreadingUDPServer((self.host, 0), UDPHandler)
            port = udp.server_address[1]
            try:
                socketserver.ThreadingTCPServer.allow_reuse_address = True
                tcp = socketserver.ThreadingTCPServer((self.host, port), TCPHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover
            raise RuntimeError("no spare port for UDP and TCP")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True, name="dns").start()
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
