"""mailflow's one HTTP client (mailflow/relay/http.py, issue 23 item 8), against a real
HTTPS server with a certificate from a test CA: verification on, a whole-request deadline,
a bounded answer, no redirects."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from harness.dnsserver import free_port
from harness.httpsserver import Answer, HTTPSServer
from mailflow.config.settings import Outbound, Tls
from mailflow.relay import http

HOST = "127.0.0.1"


def serve(ca: trustme.CA) -> HTTPSServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    return HTTPSServer(HOST, free_port(), context).start()


@pytest.fixture
def server(tls_ca: trustme.CA) -> Iterator[HTTPSServer]:
    s = serve(tls_ca)
    yield s
    s.stop()


@pytest.fixture
def tls(tmp_path: Path, tls_ca: trustme.CA) -> Tls:
    tls_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return Tls(ca=str(tmp_path / "ca.pem"), rejectUnauthorized=True)


def url(server: HTTPSServer, path: str = "/x") -> str:
    return f"https://{HOST}:{server.port}{path}"


def test_an_answer_is_read_whole_with_verification_on(server, tls):
    server.routes[HOST] = Answer(b"version: STSv1\r\n", content_type="text/plain; charset=utf-8")
    got = http.request(url(server), Outbound(), tls)
    assert (got.status, got.content_type, got.body) == (200, "text/plain", b"version: STSv1\r\n")


def test_a_trickling_server_cannot_outlast_the_deadline(server, tls):
    """At 7ff0849 the 10 s limit was checked between 4 KiB reads: a byte every half second
    held the thread as long as the server liked.  Here 40 bytes, one each 0.25 s (10 s in
    all), against a 1 s deadline: without a deadline for the whole request it would be read."""
    server.routes[HOST] = Answer(b"x" * 40, trickle=0.25)
    with pytest.raises(http.HttpError, match="within the time allowed"):
        http.request(url(server), Outbound(), tls, timeout=1.0)


def test_the_answer_is_bounded(server, tls):
    server.routes[HOST] = Answer(b"y" * 70_000)
    with pytest.raises(http.HttpError, match="over 65536 bytes"):
        http.request(url(server), Outbound(), tls, max_size=65_536)


def test_no_redirect_is_followed(server, tls):
    server.routes[HOST] = Answer(b"", status=302, location="https://elsewhere.test/")
    assert http.request(url(server), Outbound(), tls).status == 302
    assert len(server.requests) == 1


def test_a_certificate_from_another_ca_is_untrusted(tls):
    other = serve(trustme.CA())
    try:
        with pytest.raises(http.HttpError) as exc:
            http.request(url(other), Outbound(), tls)
        assert exc.value.untrusted
    finally:
        other.stop()


def test_plain_http_only_where_allowed_and_one_connection_is_kept(server, tls):
    with pytest.raises(http.HttpError, match="not an https URL"):
        http.request(f"http://{HOST}:{server.port}/", Outbound(), tls)
    server.routes[HOST] = Answer(b"ok")
    with http.Client(Outbound(), tls) as client:
        for _ in range(3):
            assert client.request(url(server), method="POST", body=b"{}").status == 200
    ports = {r.peer for r in server.requests}
    assert len(server.requests) == 3 and len(ports) == 1
