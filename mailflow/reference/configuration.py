"""``config.md``: every file of a config directory, and every key with its type and default."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from mailflow.config.environ import VARIABLES
from mailflow.config.settings import FILES, ConfigFile, Key, default_text, docs_of, kind_of
from mailflow.reference.markdown import GENERATED, code, table

HEADER = ("Key", "Type", "Default", "Meaning")

INTRO = """\
# Configuration files

mailflow reads one directory of files (`--config DIR`, `$MAILFLOW_CONFIG`, else `./config`);
the repository's `config/` holds an example of each, every key commented with its default.
`.ini` files take `key = value` lines under `[section]` headers (keys before any section
belong to `[main]`), `;` or `#` comments, booleans as true/false/yes/no/1/0, lists comma
separated. A wrong key or value stops the process with `FILE:LINE: what`, never a default
in its place; a file re-read while running keeps its previous settings when its new text is
wrong, and says so in the log.

Files marked *live* are read again within seconds of a change. The others are read when a
process starts: after changing one, restart mailflow (`mailflow run`, or `mailflow smtpd`
and every worker host's `celery -A mailflow worker`); a running process logs a warning
naming the file when it sees it changed.

"""


def _when(f: ConfigFile) -> str:
    return "live" if f.live else "at start (restart for a change)"


def _dataclass_rows(cls: type) -> list[tuple[str, str, str, str]]:
    docs = docs_of(cls)
    return [(code(f.name), kind_of(cls, f.name), code(default_text(cls, f.name)), docs[f.name])
            for f in fields(cls)]


def _key_rows(keys: tuple[Key, ...]) -> list[tuple[str, str, str, str]]:
    return [(code(k.name), k.kind, code(k.default), k.doc) for k in keys]


def _file(f: ConfigFile) -> str:
    out = [f"## {f.name}\n", f"{f.doc[0].upper()}{f.doc[1:]}.\n", f"Read: {_when(f)}."
           + (f" {f.note[0].upper()}{f.note[1:]}." if f.note else "") + "\n"]
    for section, keys in f.sections:
        title = f"`[{section}]`" if not section.startswith("[") else " ".join(
            f"`{s}`" for s in section.split())
        out.append(f"### {title}\n")
        rows = _dataclass_rows(keys) if is_dataclass(keys) else _key_rows(keys)  # type: ignore[arg-type]
        out.append(table(HEADER, rows))
    return "\n".join(out)


ENVIRONMENT = """\
## Environment

Read by every command and worker, and checked when each starts: a malformed value stops it
with one line naming the variable (every malformed one, a line each), never a default in
its place.

"""


def _environment() -> str:
    rows = [(code(v.name), v.kind, code(v.shown) if v.default is not None else v.shown, v.doc)
            for v in VARIABLES.values()]
    return ENVIRONMENT + table(("Variable", "Type", "Default", "Meaning"), rows)


def page() -> str:
    listing = table(("File", "Holds", "Read"), [(f"[{f.name}](#{_anchor(f.name)})", f.doc, _when(f))
                                                for f in FILES])
    return (GENERATED + INTRO + listing + "\n"
            + "\n".join(_file(f) for f in FILES) + "\n" + _environment())


def _anchor(name: str) -> str:
    """GitHub's heading anchor for a file name (dots and underscores: dots drop)."""
    return name.lower().replace(".", "")
