"""DKIM keys in Haraka's layout: ``dkim/<domain>/selector`` and ``dkim/<domain>/private``.

Ed25519 (RFC 8463) sits beside RSA as ``ed25519.selector`` / ``ed25519.private``
(the base64 raw private key, as dkimpy's ``dknewkey --ktype ed25519`` writes it),
never alone: receivers such as Gmail do not verify Ed25519 yet, so a domain
signed only with it would look unsigned to them.  Keys are parsed here with
``cryptography`` so that a broken file is found when mailflow starts, with its
name, rather than as a dkimpy exception inside a submission.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

RSA_SHA256 = b"rsa-sha256"
ED25519_SHA256 = b"ed25519-sha256"

#: file names (selector, private key) per algorithm, RSA first: the order of signatures
FILES = {RSA_SHA256: ("selector", "private"), ED25519_SHA256: ("ed25519.selector", "ed25519.private")}

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must refuse less
DEFAULT_RSA_BITS = 2048


class KeyProblem(Exception):
    """A key file that cannot be used; ``str()`` is ``FILE: what is wrong``."""

    def __init__(self, path: Path, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class Key:
    """One signing key of one domain."""

    domain: str
    selector: str
    algorithm: bytes  #: dkimpy's signature_algorithm
    private: bytes  #: PEM (RSA) or base64 raw key (Ed25519), as dkimpy takes them
    path: Path

    def record(self) -> str:
        """The DNS TXT record text publishing this key (RFC 6376 3.6.1)."""
        return public_record(self.algorithm, self.private, self.path)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyProblem(path, f"cannot read: {exc.strerror or exc}") from None


def _selector(path: Path) -> str:
    lines = [line.strip() for line in _read(path).decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 1 or not all(part.isascii() and part.replace("-", "").replace("_", "").isalnum()
                                   for part in lines[0].split(".")):
        raise KeyProblem(path, "must hold one selector: letters, digits, '-' and dots on one line")
    return lines[0]


def _rsa_key(path: Path, pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyProblem(path, f"not a PEM private key without a passphrase ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyProblem(path, "not an RSA key (Ed25519 keys go in ed25519.private)")
    if key.key_size < MIN_RSA_BITS:
        raise KeyProblem(path, f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} (RFC 8301)")
    return key


def _ed25519_key(path: Path, text: bytes) -> ed25519.Ed25519PrivateKey:
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise KeyProblem(path, "not an Ed25519 private key: the base64 of its 32 raw bytes")
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def public_record(algorithm: bytes, private: bytes, path: Path) -> str:
    if algorithm == RSA_SHA256:
        der = _rsa_key(path, private).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = _ed25519_key(path, private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def _load(directory: Path, domain: str, algorithm: bytes) -> Key | None:
    selector_file, private_file = (directory / name for name in FILES[algorithm])
    if not selector_file.exists() and not private_file.exists():
        return None
    selector = _selector(selector_file)
    private = _read(private_file)
    if algorithm == RSA_SHA256:
        _rsa_key(private_file, private)
    else:
        _ed25519_key(private_file, private)
    return Key(domain=domain, selector=selector, algorithm=algorithm, private=private,
               path=private_file)


def domain_keys(keys_dir: Path, domain: str) -> list[Key]:
    """The domain's keys, RSA first; [] when it has none; KeyProblem when one is unusable."""
    directory = keys_dir / domain
    if not directory.is_dir():
        return []
    found = [k for algorithm in FILES if (k := _load(directory, domain, algorithm)) is not None]
    if found and found[0].algorithm != RSA_SHA256:
        raise KeyProblem(directory / FILES[RSA_SHA256][1],
                         "missing: an Ed25519 key is used only beside an RSA key")
    return found


def domains(keys_dir: Path) -> list[str]:
    """Every domain with a key directory."""
    try:
        return sorted(p.name for p in keys_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def generate(keys_dir: Path, domain: str, selector: str, *, bits: int = DEFAULT_RSA_BITS,
             with_ed25519: bool = False) -> list[Key]:
    """Write a new RSA key (and an Ed25519 one) for the domain; refuse to overwrite one."""
    directory = keys_dir / domain
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [RSA_SHA256] + ([ED25519_SHA256] if with_ed25519 else [])
    for algorithm in wanted:
        existing = directory / FILES[algorithm][1]
        if existing.exists():
            raise KeyProblem(existing, "exists already; remove it first to make a new key")
    if bits < MIN_RSA_BITS:
        raise KeyProblem(directory / "private", f"--bits must be at least {MIN_RSA_BITS}")
    pem = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    _write(directory, RSA_SHA256, selector, pem)
    if with_ed25519:
        raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        _write(directory, ED25519_SHA256, f"{selector}-ed25519", base64.b64encode(raw) + b"\n")
    return domain_keys(keys_dir, domain)


def _write(directory: Path, algorithm: bytes, selector: str, private: bytes) -> None:
    selector_name, private_name = FILES[algorithm]
    (directory / selector_name).write_text(selector + "\n")
    fd = os.open(directory / private_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
