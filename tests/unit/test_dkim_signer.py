"""Which keys a message is signed with, as the keys directory changes under a running relay."""

from __future__ import annotations

from pathlib import Path

from mailflow.config.settings import Dkim
from mailflow.dkim.keys import generate
from mailflow.dkim.signer import Signer

MESSAGE = b"From: a@example.test\r\nTo: b@elsewhere.test\r\nSubject: s\r\n\r\nhello\r\n"


def test_a_key_made_while_running_signs_the_next_message(tmp_path: Path):
    """With no key anywhere nothing is read per message but a stat; a domain's key made
    afterwards (``mailflow dkim keygen``) signs the very next message, without a restart."""
    keys_dir = tmp_path / "dkim"
    signer = Signer(keys_dir, Dkim())
    assert signer.signature(MESSAGE) == b"" and not signer.any_keys()  # no directory at all
    keys_dir.mkdir()
    assert signer.signature(MESSAGE) == b"" and not signer.any_keys()  # an empty one
    generate(keys_dir, "other.test", "s1")
    assert signer.any_keys() and signer.signature(MESSAGE) == b""  # a key, not for this domain
    generate(keys_dir, "example.test", "s1")
    assert signer.signature(MESSAGE).startswith(b"DKIM-Signature:")
