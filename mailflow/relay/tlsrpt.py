"""TLS-RPT results (RFC 8460), noted where the session is made.

Each TLS session to an MX host that a policy (MTA-STS or DANE) covers counts as a
success or a failure of a result type (8460 4.3).  The network side notes them
here, one line appended per session to ``<state>/tlsrpt/<UTC day>.jsonl`` (an
``O_APPEND`` write of one short line: every process of the host adds without a
lock, and nothing is kept in memory to lose).  mailflow/reports/tls.py
turns a finished day into reports.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mailflow.config.state import state_dir

log = logging.getLogger(__name__)

SUCCESS = "success"
#: The todo note that marks a TLS report mail: exempt from MTA-STS and DANE enforcement.
TLS_REPORT_NOTE = "tls_report"


@dataclass(frozen=True)
class PolicyRef:
    """The policy a session is held to, as a report names it (8460 4.4 "policy")."""

    domain: str  #: the policy domain: the recipient domain
    type: str  #: "sts" or "tlsa"
    strings: tuple[str, ...]  #: the policy text lines, or the TLSA records


def directory() -> Path:
    return state_dir() / "tlsrpt"


def day(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def note(policy: PolicyRef, mx: str, ip: str, result: str, detail: str = "") -> None:
    """One session's result for the day's report (never raises: reporting is best effort)."""
    line = json.dumps({"d": policy.domain, "t": policy.type, "p": list(policy.strings), "mx": mx,
                       "ip": ip, "r": result, "why": detail[:200]}, separators=(",", ":")) + "\n"
    try:
        path = directory() / f"{day()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("TLS report result not noted (%s): %s", exc, line.strip())


def verify_result(verify_code: int) -> str:
    """The 8460 result type of a failed certificate check (OpenSSL's X509_V_ERR_*)."""
    if verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return "certificate-host-mismatch"
    if verify_code in (9, 10):  # not yet valid, expired
        return "certificate-expired"
    return "certificate-not-trusted"
