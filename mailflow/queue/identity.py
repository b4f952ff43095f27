"""A queue directory's persistent identity, and the Celery queue of its owner.

Work that touches a queue directory must run on the host that has it.  Each
queue directory has an identity, written into it once; the workers of its host
consume the Celery queue named after it, and every task of its pipeline is
published there.  A worker on another host -- or a process that reads a
different queue directory -- never receives that work.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from pathlib import Path

from mailflow.wire.names import IDENTITY

IDENTITY_FILE = ".identity"
OWNER_PREFIX = "mailflow.owner."

_known: dict[Path, str] = {}


def identity(root: Path) -> str:
    """The queue directory's identity, written on first use: ``<host>-<8 hex>``."""
    root = Path(root)
    if root in _known:
        return _known[root]
    path = root / IDENTITY_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = _create(path)
    if not IDENTITY.match(found):
        raise ValueError(f"{path}: {found!r} is not a queue identity")
    _known[root] = found
    return found


def _create(path: Path) -> str:
    """Write the identity under a temp name and link it in: the first writer wins, whole."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname().split(".")[0])[:40] or "host"
    ident = f"{host}-{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f"{IDENTITY_FILE}.{os.getpid()}.tmp")
    tmp.write_text(ident + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        ident = path.read_text().strip()
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return ident


def owner_queue(ident: str) -> str:
    """The Celery queue that only the owner's workers consume."""
    return OWNER_PREFIX + ident
