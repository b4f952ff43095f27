"""SMTP AUTH against ``auth_flat_file.ini``: PLAIN and LOGIN (aiosmtpd's), CRAM-MD5 (ours)."""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from mailflow.config.loader import Auth
from mailflow.smtpd.guessing import LOCKED_OUT, Guesses


class FlatFileAuthenticator:
    """aiosmtpd ``authenticator``: checks PLAIN/LOGIN passwords in constant time."""

    def __init__(self, auth: Auth, guesses: Guesses | None = None):
        self.users = auth.users
        self.guesses = guesses

    def check(self, login: str, password: str) -> bool:
        expected = self.users.get(login)
        if expected is None:
            hmac.compare_digest(password.encode(), password.encode())  # same work either way
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        client = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        token = ""
        if self.guesses is not None:
            token, locked = self.guesses.attempt(client, login)
            if locked is not None:
                return AuthResult(success=False, handled=False, message=LOCKED_OUT)  # not checked
        ok = self.check(login, password)
        if ok and self.guesses is not None:
            self.guesses.forgive(token, client, login)
        if not ok:
            session.mf_auth_tried = login  # for the failure's log line (the server logs it)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


def cram_challenge(hostname: str) -> bytes:
    """RFC 2195: a unique ``<random.timestamp@host>`` challenge."""
    return f"<{int.from_bytes(os.urandom(6), 'big')}.{int(time.time())}@{hostname}>".encode()


def cram_user(response: bytes) -> str:
    """The user name a CRAM-MD5 response claims (for the log line of a failure)."""
    return response.strip().rpartition(b" ")[0].decode("utf-8", "replace")


def cram_verify(users: dict[str, str], challenge: bytes, response: bytes) -> str | None:
    """The user name when ``response`` (``user hexdigest``) answers ``challenge``, else None."""
    try:
        user_b, digest_b = response.strip().rsplit(b" ", 1)
    except ValueError:
        return None
    user = user_b.decode("utf-8", "replace")
    password = users.get(user)
    if password is None:
        return None
    expected = hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest().encode()
    return user if hmac.compare_digest(expected, digest_b.lower()) else None
