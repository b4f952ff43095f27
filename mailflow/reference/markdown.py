"""The little Markdown the pages need: tables whose cells may hold any text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def cell(text: str) -> str:
    """One table cell: pipes escaped, no line breaks, code in backticks left as it is."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


GENERATED = ("<!-- Written by `make docs` from the code (mailflow/reference/); "
             "edit the code, not this page. -->\n")
