"""Secrets that cross the broker travel sealed (Fernet, from the ``cryptography`` package).

A ``get_mx`` answer may carry an AUTH password, and the MX list rides in the
batch from one pipeline step to the next through Redis or RabbitMQ, where
whoever can read the broker could read it.  So the password is sealed with a
key from the config directory, ``broker.key``: only processes that have the
config directory -- every mailflow process, on every host -- can open it, and
the broker sees an authenticated ciphertext.  Fernet (AES-CBC with an
HMAC-SHA256) is the well-kept recipe for exactly this; nothing is hand-made.

The key is created on first need (mode 0600) in the config directory; where
that is read-only (systemd's ProtectSystem puts /etc out of reach), in the
state directory, with a warning.  Either way, hosts that share a broker must
share the key: copy it into the config directory of each.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailflow.config.files import ConfigError
from mailflow.config.state import state_dir

log = logging.getLogger(__name__)

KEY_FILE = "broker.key"

_keys: dict[Path, bytes] = {}
_mac_keys: dict[bytes, bytes] = {}
_lock = threading.Lock()


class SealError(ValueError):
    """A sealed value this host cannot open (another host's key, or tampered with)."""


def _read(path: Path) -> bytes | None:
    """The key's text in ``path``, None when there is none yet; ConfigError when unusable."""
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        Fernet(text)
    except ValueError:
        raise ConfigError(path, 1, "not a key (32 url-safe base64 bytes, as "
                          "`python -c 'from cryptography.fernet import Fernet; "
                          "print(Fernet.generate_key().decode())'` prints)") from None
    return text


def load_key(path: Path) -> Fernet | None:
    """The key in ``path``, None when there is none yet; ConfigError when it is unusable."""
    text = _read(path)
    return Fernet(text) if text is not None else None


def _create(path: Path) -> None:
    """A new key at ``path``, whole, unless another process made one first: written under a
    name of its own and linked into place, so a reader never finds the file empty (several
    processes of a new install start at once: a compose file's, a node's workers)."""
    key = Fernet.generate_key() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: theirs is the key
            pass
    finally:
        os.unlink(tmp)


def _key_text(config_dir: Path) -> bytes:
    """This config directory's key (or the state directory's), created when there is none."""
    path = Path(config_dir) / KEY_FILE
    with _lock:
        text = _keys.get(path)
        if text is None:
            text = _read(path) or _made(path)
            _keys[path] = text
        return text


def key_for(config_dir: Path) -> Fernet:
    """The Fernet key that seals credentials on the broker."""
    return Fernet(_key_text(config_dir))


def mac_key(config_dir: Path) -> bytes:
    """The key every published message is authenticated with (mailflow/wire/signing.py):
    derived from ``broker.key`` by HKDF, so that the sealing and authenticating keys are
    never the same bytes and one file is all a host needs."""
    text = _key_text(config_dir)
    key = _mac_keys.get(text)
    if key is None:  # derived once per key: every publish and every task asks
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"mailflow broker message authentication").derive(base64.urlsafe_b64decode(text))
        _mac_keys[text] = key
    return key


def key_exists(config_dir: Path) -> bool:
    """Whether this config directory (or, failing that, the state directory) has the key."""
    return (Path(config_dir) / KEY_FILE).exists() or (state_dir() / KEY_FILE).exists()


def _made(path: Path) -> bytes:
    try:
        _create(path)
    except OSError as exc:
        fallback = state_dir() / KEY_FILE
        log.warning("cannot create %s (%s): using %s; hosts that share the broker need the same "
                    "key in their config directory", path, exc.strerror or exc, fallback)
        text = _read(fallback)
        if text is not None:
            return text
        try:
            _create(fallback)
        except OSError as again:
            raise ConfigError(path, None, f"cannot create the key that authenticates broker "
                              f"messages: {again.strerror or again}") from None
        path = fallback
    text = _read(path)
    assert text is not None
    return text


def seal(config_dir: Path, secret: str) -> str:
    return key_for(config_dir).encrypt(secret.encode("utf-8")).decode("ascii")


def unseal(config_dir: Path, token: str) -> str:
    try:
        return key_for(config_dir).decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise SealError(f"cannot open sealed get_mx credentials with {Path(config_dir) / KEY_FILE} "
                        "(is it the same file on every host?)") from exc
