"""The API's listener and its config: HTTPS with a certificate (the strict path), plain HTTP
only on loopback, a broken certificate found at start."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.dnsserver import free_port
from mailflow import config as configmod
from mailflow.api import server as api_server
from mailflow.api.keys import Keys
from mailflow.config.files import ConfigError


def _config(tmp_path: Path, http_ini: str) -> configmod.Config:
    (tmp_path / "me").write_text("mailflow.test\n")
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "http.ini").write_text(http_ini)
    return configmod.load(tmp_path)


def test_https_serves_with_the_certificate_and_refuses_a_client_that_does_not_trust_it(tmp_path, tls_ca):
    cert = tls_ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "api.pem"))
    port = free_port()
    cfg = _config(tmp_path, f"listen = 127.0.0.1:{port}\ncert = api.pem\nkey = api.pem\n")
    secret = Keys(tmp_path).add("app")
    trusting = ssl.create_default_context()
    tls_ca.configure_trust(trusting)
    said: list[str] = []

    async def scenario() -> tuple[int, dict, str]:
        runner = await api_server.start(cfg, said.append)
        assert runner is not None
        try:
            def fetch() -> tuple[int, dict, str]:
                request = urllib.request.Request(f"https://127.0.0.1:{port}/api/openapi.json",
                                                 headers={"Authorization": f"Bearer {secret}"})
                with urllib.request.urlopen(request, context=trusting, timeout=10) as answer:
                    status, body = answer.status, json.loads(answer.read())
                try:  # a client without the CA: the handshake fails, nothing is served
                    urllib.request.urlopen(f"https://127.0.0.1:{port}/api/openapi.json",
                                           context=ssl.create_default_context(), timeout=10)
                    refused = "served"
                except urllib.error.URLError as exc:
                    refused = str(exc.reason)
                return status, body, refused
            return await asyncio.get_running_loop().run_in_executor(None, fetch)
        finally:
            await runner.cleanup()

    status, body, refused = asyncio.run(scenario())
    assert status == 200 and body["openapi"].startswith("3.1")
    assert "CERTIFICATE_VERIFY_FAILED" in refused
    assert said == [f"listening on https://127.0.0.1:{port}"]


@pytest.mark.parametrize(("http_ini", "says"), [
    ("listen = 192.0.2.1:8025\n", "not a loopback address: set cert and key"),
    ("listen = 127.0.0.1:8025\ncert = api.pem\n", "cert and key go together"),
    ("listen = 127.0.0.1:8025\ncert = missing.pem\nkey = missing.pem\n", "cannot load the certificate"),
    ("listen = 127.0.0.1:8025\nmax_body = lots\n", "max_body"),
])
def test_a_listener_that_cannot_be_safe_stops_the_start(tmp_path, http_ini, says):
    with pytest.raises(ConfigError, match=says):
        _config(tmp_path, http_ini)


def test_off_unless_listen_is_set(tmp_path):
    cfg = _config(tmp_path, "; nothing\n")
    assert asyncio.run(api_server.start(cfg, print)) is None


def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config(tmp_path, f"listen = 127.0.0.1:{port}\n")
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(api_server.start(cfg, print))

