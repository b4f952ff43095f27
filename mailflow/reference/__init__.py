"""``docs/reference/``: the reference pages, written from the code that defines what they list.

Each page is drawn from the one registry its subject has -- the config keys from
``mailflow/config/settings.py``, the metrics from ``mailflow/observation/metrics.py``'s ``METRICS``, the
log lines from ``mailflow/logs.py``'s ``EVENTS``, the commands from the argument parsers --
so the pages cannot say what the code does not do.  ``make docs`` writes them; a test
fails when the committed pages differ from what the code would write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailflow.reference import classes, commands, configuration, events, metrics

#: page file name -> the function that writes it
PAGES: dict[str, Callable[[], str]] = {
    "config.md": configuration.page,
    "metrics.md": metrics.page,
    "logs.md": events.page,
    "commands.md": commands.page,
    "classes.md": classes.page,
}


def pages() -> dict[str, str]:
    """Every page's text, by file name."""
    return {name: write() for name, write in PAGES.items()}


def write(directory: Path) -> list[Path]:
    """Write every page into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in pages().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def stale(directory: Path) -> list[str]:
    """The pages in ``directory`` that are missing or differ from what the code writes."""
    found = []
    for name, text in pages().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            found.append(name)
    return found
