"""A destination batch: the unit of work of the pipeline (docs/architecture.md).

A batch is a JSON dict carried from task to task: ``domain``, ``names`` (queue
file names in ``active/``), then ``mx`` (the MX list as dicts) and ``bind`` /
``helo`` once looked up.  Each step re-reads the files; an entry no longer
in ``active/`` has been handled and is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .config import Config
from .hmail import HMail
from .mx import MX, Target
from .qfile import CorruptEntry
from .spool import ACTIVE, Spool

log = logging.getLogger(__name__)


def load(spool: Spool, names: list[str]) -> list[HMail]:
    out = []
    for name in names:
        path = spool.path(name, ACTIVE)
        try:
            out.append(HMail.load(path))
        except FileNotFoundError:
            continue
        except CorruptEntry as exc:
            spool.move_aside(path, str(exc))
    return out


def mx_to_json(mx: MX) -> dict[str, Any]:
    return dataclasses.asdict(mx)


def mx_from_json(data: dict[str, Any]) -> MX:
    return MX(**data)


def source_for(target: Target, batch: dict[str, Any], cfg: Config) -> tuple[str | None, str]:
    """Source address and EHLO name: get_mx's bind/bind_helo, else the notes, else defaults."""
    bind = target.mx.bind or batch.get("bind") or None
    helo = target.mx.bind_helo or batch.get("helo") or cfg.me
    return bind, helo
