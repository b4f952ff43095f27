"""Readers for Haraka-style config files, keeping line numbers for errors.

Every error is a :class:`ConfigError` whose text is ``FILE:LINE: what is wrong``,
so that an operator can go straight to the line.  An unknown key or section is an
error too, with the closest known one: a typo must not quietly leave a default on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class Value:
    """A raw value with where it came from."""

    text: str
    line: int
    is_list: bool = False
    items: list[str] = field(default_factory=list)


@dataclass
class IniFile:
    """A parsed ini file: ``sections[name][key] -> Value``; keys before any section are ``main``."""

    path: Path
    sections: dict[str, dict[str, Value]]
    #: the line of each section's header (``main``: none, or its explicit ``[main]``)
    section_lines: dict[str, int] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Value]:
        return self.sections.get(name, {})

    def only_sections(self, *known: str) -> None:
        """ConfigError at the first section that is none of ``known`` (``main`` always is)."""
        for name in self.sections:
            if name != "main" and name not in known:
                raise ConfigError(self.path, self.section_lines.get(name),
                                  unknown("section", name, ("main", *known)))


def unknown(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown key 'x' (did you mean 'y'?)``: a typo must stop the start, and say where."""
    choices = list(known)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    shown = f"[{name}]" if what == "section" else repr(name)
    if close:
        near = lowered[close[0]]
        return f"unknown {what} {shown} (did you mean {f'[{near}]' if what == 'section' else repr(near)}?)"
    return f"unknown {what} {shown}"


_SECTION = re.compile(r"^\[\s*([^\]]+?)\s*\]$")
_KEYVAL = re.compile(r"^([^=\s][^=]*?)\s*=\s*(.*)$")


def _strip_comment(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith(("#", ";")):
        return ""
    return stripped


def read_ini(path: Path) -> IniFile:
    """Parse ``path``; a missing file is an empty one (every key takes its default)."""
    sections: dict[str, dict[str, Value]] = {"main": {}}
    lines: dict[str, int] = {}
    if not path.exists():
        return IniFile(path, sections)
    current = "main"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from exc
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            sections.setdefault(current, {})
            lines.setdefault(current, lineno)
            continue
        if line.startswith("["):
            raise ConfigError(path, lineno, f"malformed section header {line!r}")
        m = _KEYVAL.match(line)
        if not m:
            raise ConfigError(path, lineno, f"expected 'key = value', got {line!r}")
        key, value = m.group(1).strip(), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        target = sections[current]
        if key.endswith("[]"):
            key = key[:-2].strip()
            entry = target.setdefault(key, Value("", lineno, is_list=True))
            entry.items.append(value)
            entry.text = ",".join(entry.items)
            continue
        target[key] = Value(value, lineno)
    return IniFile(path, sections, lines)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines of a list file, with their line numbers."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from exc
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((lineno, line))
    return out


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("must be true/false/yes/no/1/0")


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
