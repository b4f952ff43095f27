"""docs/reference/ is the code's own account of itself: written from the registries, complete,
and never stale."""

from __future__ import annotations

import ast
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from mailflow import config as configmod
from mailflow import reference
from mailflow.config import settings
from mailflow.logs import EVENTS
from mailflow.observation.metrics import METRICS, HostCollector

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_pages_are_what_the_code_writes():
    assert reference.stale(REPO / "docs" / "reference") == [], "docs/reference/ is stale: run make docs"


def test_a_stale_page_is_found(tmp_path):
    reference.write(tmp_path)
    assert reference.stale(tmp_path) == []
    page = tmp_path / "config.md"
    page.write_text(page.read_text().replace("`concurrency_max` | integer >= 1 | `100`",
                                             "`concurrency_max` | integer >= 1 | `50`"))
    (tmp_path / "metrics.md").unlink()
    assert reference.stale(tmp_path) == ["config.md", "metrics.md"]


def _dataclasses() -> list[type]:
    return [keys for f in settings.FILES for _, keys in f.sections if is_dataclass(keys)]  # type: ignore[misc]


@pytest.mark.parametrize("cls", _dataclasses(), ids=lambda c: c.__name__)
def test_every_default_is_written_as_its_file_would_read_it(cls):
    """The page's default column, read back by the key's own parser, is the default: the
    reference cannot show one value while mailflow uses another."""
    parsers, defaults = settings.parsers_of(cls), settings.defaults_of(cls)
    for f in fields(cls):
        shown = settings.default_text(cls, f.name)
        assert settings.kind_of(cls, f.name)
        if shown == "" and defaults[f.name] in (None, ()):
            continue
        assert parsers[f.name](shown) == defaults[f.name], (f.name, shown)


def test_every_file_the_loader_knows_is_in_the_reference():
    page = reference.pages()["config.md"]
    for f in settings.FILES:
        assert f"## {f.name}\n" in page
    for keys in (settings.ROUTE_KEYS, settings.WEBHOOK_KEYS, settings.SHAPING_RULE_KEYS):
        for key in keys:
            assert f"| `{key.name}` |" in page


def test_the_metrics_registry_is_what_the_endpoint_serves(tmp_path):
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    served = [family.name for family in HostCollector(configmod.Config(tmp_path)).collect()]
    assert sorted(served) == sorted(METRICS)


def _event_calls() -> list[tuple[Path, int, str, list[str]]]:
    """Every ``logs.event(KIND, key=...)`` in the product: its kind and field names."""
    found = []
    for path in [*(REPO / "mailflow").rglob("*.py"), *(REPO / "tasks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "event" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "logs"):
                continue
            kind = node.args[0]
            names: list[str] = []
            for kw in node.keywords:
                if kw.arg is not None:
                    names.append(kw.arg)
                    continue
                for d in ast.walk(kw.value):  # **{"from": ...} and **({"via": via} if via else {})
                    if isinstance(d, ast.Dict):
                        names += [k.value for k in d.keys if isinstance(k, ast.Constant)]
            found.append((path, node.lineno, kind.value if isinstance(kind, ast.Constant) else "", names))
    return found


def test_every_log_line_written_is_in_the_registry_with_its_fields():
    """A call's kind is in logs.EVENTS and its fields are the kind's, in its order; a kind
    chosen at run time (the attempt line's delivered/deferred/failed) must fit every kind
    whose fields it writes; and every kind of the registry is written somewhere."""
    calls = _event_calls()
    assert len(calls) >= 8
    written: set[str] = set()
    for path, line, kind, names in calls:
        where = f"{path.relative_to(REPO)}:{line}"
        candidates = [kind] if kind else [k for k, e in EVENTS.items()
                                          if set(names) <= {n for n, _ in e.fields}]
        assert candidates and all(k in EVENTS for k in candidates), \
            f"{where}: logs.event({kind or names!r}) is not in logs.EVENTS"
        for k in candidates:
            declared = [name for name, _ in EVENTS[k].fields]
            assert set(names) <= set(declared), f"{where}: {set(names) - set(declared)} not declared"
            assert names == [n for n in declared if n in names], f"{where}: fields out of order"
        written.update(candidates)
    assert written == set(EVENTS)


def test_every_environment_variable_the_product_reads_is_in_the_registry():
    """No ``os.environ.get("MAILFLOW_…")`` outside the registry: a variable read with a bare
    int() at import was a traceback for a typo, and no page said it existed."""
    from mailflow.config.environ import VARIABLES

    read = set()
    for path in [*(REPO / "mailflow").rglob("*.py"), *(REPO / "tasks").rglob("*.py"),
                 REPO / "celeryconfig.py", REPO / "deploy" / "flower" / "flowerconfig.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.startswith(("MAILFLOW_", "FLOWER_")) and node.value.isupper():
                read.add(node.value)
    # Flower's own switch, which mailflow flower sets for --unauthenticated, is Flower's
    assert read - set(VARIABLES) <= {"FLOWER_UNAUTHENTICATED_API"}, read - set(VARIABLES)
