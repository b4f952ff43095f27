"""Redis scripts, kept in ``.lua`` files beside the module that runs them (an editor and a
linter see Lua, not a Python string), read once when that module is imported."""

from __future__ import annotations

from importlib import resources


def script(package: str, name: str) -> str:
    """The text of ``name`` in ``package`` (shipped in the wheel as package data)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")
