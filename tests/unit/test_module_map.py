"""docs/architecture.md names every module of mailflow/ and tasks/, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def named_in_the_map() -> set[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text[text.index("### Every module"):text.index("## The queue directory")]
    return set(re.findall(r"^- `((?:mailflow|tasks)/[\w/]+\.py)` -- \S", section, re.M))


def in_the_tree() -> set[str]:
    return {str(p.relative_to(REPO)) for root in ("mailflow", "tasks") for p in (REPO / root).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_every_module_is_on_the_map_and_every_module_on_it_exists():
    named, present = named_in_the_map(), in_the_tree()
    assert sorted(present - named) == [], "modules missing from docs/architecture.md's map"
    assert sorted(named - present) == [], "modules on the map that are gone"
