"""TLS contexts from tls.ini, one builder for the listener and for outbound sessions.

Server contexts carry our certificate; client contexts verify the server's
chain and name (against ``ca``, or the system's bundle) when asked to, and
offer our certificate when one is configured and the server requests it.
``ciphers`` and ``minVersion`` apply to both.
"""

from __future__ import annotations

import os
import ssl

from mailflow.config.settings import Tls


def has_certificate(policy: Tls) -> bool:
    return bool(policy.cert and policy.key and os.path.exists(policy.cert)
                and os.path.exists(policy.key))


def context(policy: Tls, *, server: bool, verify: bool = False) -> ssl.SSLContext:
    """A context for accepting (``server``) or for connecting, verifying or not.

    Raises ssl.SSLError or OSError for files that do not load.
    """
    if server:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    else:
        ctx = ssl.create_default_context(cafile=policy.ca or None)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    if policy.ciphers:
        ctx.set_ciphers(policy.ciphers)
    if policy.minVersion:
        ctx.minimum_version = ssl.TLSVersion[policy.minVersion.replace(".", "_")]
    if has_certificate(policy):
        ctx.load_cert_chain(policy.cert, policy.key)
    return ctx
