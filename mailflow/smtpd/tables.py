"""aiosmtpd's per-connection method tables, built from what is found once per class.

aiosmtpd's ``SMTP.__init__`` builds its command table from ``dir(self)``, its
hook table from ``dir(handler)`` and its AUTH table from
``inspect.getmembers()`` of both -- which lists, and reads, every attribute of
each -- and parses ``handle_EHLO``'s signature.  That is done for every
connection, and most clients (``smtp-source``, applications) open one connection
per message: 125 µs of CPU each, about a tenth of what smtpd spends on a 4 KiB
message.  The tables only look at names with a few prefixes, so these objects
list just those names (``__dir__``), found once per class, and the hook keeps
its parsed signature (:func:`signed`); the tables come out the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_NAMES: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The class's attribute names that start with one of ``prefixes`` (dir(cls), once)."""
    key = (cls, prefixes)
    if key not in _NAMES:
        _NAMES[key] = [name for name in dir(cls) if name.startswith(prefixes)]
    return _NAMES[key]


class ListedOnce:
    """``dir(obj)`` is what aiosmtpd's tables need: the names with ``TABLE_PREFIXES``."""

    TABLE_PREFIXES: tuple[str, ...] = ()

    def __dir__(self) -> list[str]:
        return names(type(self), self.TABLE_PREFIXES)


def signed(fn: F) -> F:
    """Keep ``fn``'s parsed signature on it, where ``inspect.signature`` looks first."""
    fn.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return fn
