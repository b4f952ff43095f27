"""mailflow's one HTTP client: MTA-STS policies, TLS reports and delivery webhooks (urllib3).

Every request is made the way delivery makes connections: the host resolved through the
configured ``nameservers`` (as MX hosts are; urllib3 is handed the address, and the name
for SNI and for checking the certificate), verified against tls.ini's ``ca`` or the
system's, no redirect followed, no retry, the answer capped in size -- and in *time*:
``timeout`` is a deadline for the whole request, enforced between every read, so a
server that trickles a byte every half second cannot hold a delivery thread longer than
it (urllib3's own read timeout is per read, and http.client's ``read(4096)`` waited for
4 KiB between checks).

A :class:`Client` keeps one connection per origin alive for its life (a webhook batch
POSTs many events to one endpoint); :func:`request` is one request on a client of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as TimeoutStateError

from mailflow.config.settings import Outbound, Tls
from mailflow.relay.mx import is_ip, resolve_host
from mailflow.relay.tlspolicy import client_context

#: Most bytes of an answer read when the caller sets no cap (a webhook receiver's reply).
DEFAULT_MAX = 64 * 1024
READ_BLOCK = 16 * 1024


class HttpError(Exception):
    """The request did not get an answer; ``untrusted`` when the certificate was the reason."""

    def __init__(self, message: str, untrusted: bool = False):
        self.untrusted = untrusted
        super().__init__(message)


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes


class Client:
    """Requests with kept-alive connections, one per origin; ``https_only`` refuses http://."""

    def __init__(self, settings: Outbound, tls: Tls, *, https_only: bool = True):
        self.settings, self.tls, self.https_only = settings, tls, https_only
        self._pools: dict[tuple[str, str, int], urllib3.HTTPConnectionPool] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def request(self, url: str, *, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0,
                max_size: int = DEFAULT_MAX) -> Response:
        """The response, read whole within ``timeout`` from now; HttpError when there is none."""
        deadline = time.monotonic() + timeout
        parts = urlsplit(url)
        if parts.scheme not in (("https",) if self.https_only else ("https", "http")) or not parts.hostname:
            raise HttpError(f"{url}: not an {'https' if self.https_only else 'http(s)'} URL")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Host": parts.netloc.rpartition("@")[2], "User-Agent": "mailflow", **(headers or {})}
        for again in (False, True):
            pool = self._pool(parts.scheme, host, port)
            try:
                return _exchange(pool, method, path, body, sent, deadline, max_size)
            except ProtocolError as exc:  # a kept-alive connection the server had closed: once more
                self._drop(parts.scheme, host, port)
                if again or time.monotonic() >= deadline:
                    raise HttpError(f"{method} {url}: {exc}") from None
            except SSLError as exc:
                self._drop(parts.scheme, host, port)
                untrusted = "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate" in str(exc).lower()
                raise HttpError(f"{host}: {exc}", untrusted=untrusted) from None
            except HttpError as exc:
                self._drop(parts.scheme, host, port)
                raise HttpError(f"{method} {url}: {exc}", exc.untrusted) from None
            except (TimeoutError, TimeoutStateError) as exc:  # the read given what was left
                self._drop(parts.scheme, host, port)
                raise HttpError(f"{method} {url}: no whole answer within the time allowed "
                                f"({timeout:g} s: {exc})") from None
            except (Urllib3Error, OSError) as exc:
                self._drop(parts.scheme, host, port)
                raise HttpError(f"{method} {url}: {exc}") from None
        raise AssertionError("unreachable")

    def _pool(self, scheme: str, host: str, port: int) -> urllib3.HTTPConnectionPool:
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            addresses, _ = resolve_host(host, self.settings)
            if not addresses:
                raise HttpError(f"{host} has no address")
            options: dict[str, Any] = {"maxsize": 1, "block": False, "retries": False}
            if scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    addresses[0], port, ssl_context=client_context(self.tls, True),
                    server_hostname=None if is_ip(host) else host, assert_hostname=host, **options)
            else:
                pool = urllib3.HTTPConnectionPool(addresses[0], port, **options)
            self._pools[key] = pool
        return pool

    def _drop(self, scheme: str, host: str, port: int) -> None:
        pool = self._pools.pop((scheme, host, port), None)
        if pool is not None:
            pool.close()


def _exchange(pool: urllib3.HTTPConnectionPool, method: str, path: str, body: bytes | None,
              headers: dict[str, str], deadline: float, max_size: int) -> Response:
    left = _left(deadline)
    response = pool.urlopen(method, path, body=body, headers=headers, redirect=False, retries=False,
                            preload_content=False, assert_same_host=False,
                            timeout=urllib3.Timeout(connect=left, read=left))
    try:
        data = bytearray()
        while True:
            sock = getattr(response.connection, "sock", None)
            if sock is not None:
                sock.settimeout(_left(deadline))  # this read may take what is left, no more
            chunk = response.read1(READ_BLOCK)
            if not chunk:
                break
            data += chunk
            if len(data) > max_size:
                raise HttpError(f"answer over {max_size} bytes")
            _left(deadline)
        kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return Response(response.status, kind, bytes(data))
    except BaseException:
        response.close()  # never back to the pool half read
        raise
    finally:
        response.release_conn()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HttpError("no whole answer within the time allowed")
    return left


def request(url: str, settings: Outbound, tls: Tls, *, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0,
            max_size: int = DEFAULT_MAX) -> Response:
    """One https request on a connection of its own (MTA-STS policies, TLS reports)."""
    with Client(settings, tls) as client:
        return client.request(url, method=method, body=body, headers=headers, timeout=timeout,
                              max_size=max_size)
