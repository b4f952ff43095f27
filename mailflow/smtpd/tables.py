"""aiosmtpd's per-connection method tables: found once, then given to each connection.

aiosmtpd's ``SMTP.__init__`` builds its command table from ``dir(self)``, its
hook table from ``dir(handler)`` and its AUTH table from
``inspect.getmembers()`` of both -- which lists, and reads, every attribute of
each -- and parses ``handle_EHLO``'s signature.  That is done for every
connection, and most clients (``smtp-source``, applications) open one connection
per message: 125 µs of CPU each, about a tenth of what smtpd spends on a 4 KiB
message.  The tables only look at names with a few prefixes, so these objects
list just those names (``__dir__``), found once per class, and the hook keeps
its parsed signature (:func:`signed`); the tables come out the same.

Even so, building them cost a tenth of a submission process's samples with a
connection per message.  :class:`Tables` keeps one protocol's tables, built the
way aiosmtpd builds them, and gives every later connection the same ones bound to
it: aiosmtpd's own building then finds nothing to list (an ``unlisted`` protocol
and a stand-in handler) and the copies are put in its place.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
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
        if self.__dict__.get(UNLISTED):  # its tables are given, not built (Tables)
            return []
        return names(type(self), self.TABLE_PREFIXES)


#: The attribute that makes a protocol list nothing while aiosmtpd builds its tables.
UNLISTED = "_mf_unlisted"


class Unlisted:
    """A stand-in handler with nothing to list, for aiosmtpd to build empty tables from."""

    def __dir__(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Tables:
    """aiosmtpd's per-connection tables of one protocol built the stock way (``template``):
    its AUTH mechanisms, the handler's hooks, the EHLO hook's form, its commands -- each
    entry kept as what to bind to a connection (the template's own methods) or as it is."""

    #: (mechanism, function or method, whether it is the protocol's own, the entry's type, built-in)
    auth: tuple[tuple[str, Any, bool, type, bool], ...]
    handle_hooks: dict[str, Callable[..., Any]]
    ehlo_hook_ver: str | None
    #: (command, function or method, whether it is the protocol's own)
    commands: tuple[tuple[str, Any, bool], ...]

    @classmethod
    def of(cls, template: Any) -> Tables:
        def unbound(method: Any) -> tuple[Any, bool]:
            own = getattr(method, "__self__", None) is template
            return (method.__func__ if own else method), own

        return cls(tuple((name, *unbound(attr.method), type(attr), attr.is_builtin)
                         for name, attr in template._auth_methods.items()),
                   dict(template._handle_hooks), template._ehlo_hook_ver,
                   tuple((name, *unbound(method)) for name, method in template._smtp_methods.items()))

    def give(self, server: Any) -> None:
        """Put the tables in ``server``, the template's own methods bound to it."""
        server._auth_methods = {name: kind(MethodType(fn, server) if own else fn, builtin)
                                for name, fn, own, kind, builtin in self.auth}
        server._handle_hooks = dict(self.handle_hooks)  # the handler's: shared by every connection
        server._ehlo_hook_ver = self.ehlo_hook_ver
        server._smtp_methods = {name: MethodType(fn, server) if own else fn
                                for name, fn, own in self.commands}


def signed(fn: F) -> F:
    """Keep ``fn``'s parsed signature on it, where ``inspect.signature`` looks first."""
    fn.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return fn
