"""aiosmtpd's tables come out the same from the names listed once per class (smtpd/tables.py)."""

from __future__ import annotations

import asyncio

from mailflow import config
from mailflow.smtpd.server import protocol_factory


def test_command_hook_and_auth_tables_are_those_a_full_dir_gives(tmp_path):
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "auth_flat_file.ini").write_text(
        "[core]\nmethods = PLAIN,LOGIN,CRAM-MD5\n[users]\nalice = secret\n")
    factory = protocol_factory(config.Config(tmp_path), "127.0.0.1", None)
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        server = factory()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    every = object.__dir__(server)  # what dir() listed before
    assert sorted(server._smtp_methods) == sorted(m[5:] for m in every if m.startswith("smtp_"))
    handler = server.event_handler
    assert sorted(server._handle_hooks) == sorted(
        m[7:] for m in object.__dir__(handler) if m.startswith("handle_"))
    assert sorted(server._auth_methods) == ["CRAM-MD5", "LOGIN", "PLAIN"]
    assert server._ehlo_hook_ver == "new"  # from handle_EHLO's signature, kept on it
