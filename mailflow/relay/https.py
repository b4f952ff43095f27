"""One bounded HTTPS request, the way delivery makes them: the host resolved through the
configured ``nameservers`` (as MX hosts are), the certificate verified against tls.ini's
``ca`` or the system's, no redirect followed, the answer capped in size and time.

Used for MTA-STS policies (RFC 8461 3.3) and TLS reports posted to an https ``rua``
(RFC 8460 5.4).  http.client is given the socket already connected and verified, so
it never does a lookup of its own through the system resolver.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailflow.config.settings import Outbound, Tls
from mailflow.relay.mx import resolve_host
from mailflow.relay.tlspolicy import client_context


class HttpsError(Exception):
    """The request did not get an answer; ``untrusted`` when the certificate was the reason."""

    def __init__(self, message: str, untrusted: bool = False):
        self.untrusted = untrusted
        super().__init__(message)


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes


def request(url: str, settings: Outbound, tls: Tls, *, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0,
            max_size: int = 64 * 1024) -> Response:
    """The response to one request; HttpsError when there is none within ``timeout``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise HttpsError(f"{url}: not an https URL")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    addresses, _ = resolve_host(host, settings)
    if not addresses:
        raise HttpsError(f"{host} has no address")
    deadline = time.monotonic() + timeout
    context = client_context(tls, True)
    try:
        sock = socket.create_connection((addresses[0], port), timeout=timeout)
    except OSError as exc:
        raise HttpsError(f"connect to {host}: {exc}") from None
    try:
        try:
            tls_sock = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise HttpsError(f"{host}: {exc.verify_message}", untrusted=True) from None
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        conn.sock = tls_sock  # connected and verified: http.client uses it as it is
        conn.request(method, path, body=body, headers={"User-Agent": "mailflow", **(headers or {})})
        response = conn.getresponse()
        data = b""
        while chunk := response.read(4096):
            data += chunk
            if len(data) > max_size:
                raise HttpsError(f"{host}: answer over {max_size} bytes")
            if time.monotonic() > deadline:
                raise HttpsError(f"{host}: answer not read within {timeout:.0f} s")
        ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        return Response(response.status, ctype, data)
    except (OSError, http.client.HTTPException) as exc:
        raise HttpsError(f"{method} {url}: {exc}") from None
    finally:
        sock.close()
