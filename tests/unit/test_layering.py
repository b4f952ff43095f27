"""The shape of the code: sides in folders, tasks on top, no import cycle (issue 11).

The import graph is read from the source (ast), one edge per import statement:
``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``.  A package's own ``__init__`` is not counted as imported by its
submodules (Python runs it first whatever they import), so a cycle here is
one an import statement made.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mailflow.application import app
from mailflow.payloads import TASK_NAMES

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("mailflow", "tasks")


def modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, ast.AST]]:
    """(imported module, node) for every import statement of the module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in known else base, node))
    return [(target, node) for target, node in out if target.split(".")[0] in ROOTS]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {t for t, _ in imports_of(name, path, known)}
        # importing anything below a package runs the package's __init__ anyway: not an edge
        edges[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_mailflow_or_between_mailflow_and_tasks():
    found = cycle(graph())
    assert found is None, " -> ".join(found or [])


def test_the_library_never_imports_a_task_module():
    offenders = [f"{name} imports {target}" for name, targets in graph().items()
                 if name.startswith("mailflow") for target in targets if target.startswith("tasks")]
    assert offenders == []


def test_no_import_inside_a_function():
    mods = modules()
    found = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found += [f"{name}:{sub.lineno}" for sub in ast.walk(node)
                          if isinstance(sub, ast.Import | ast.ImportFrom)]
    assert found == []


@pytest.mark.parametrize("side,forbidden", [("mailflow.relay", ("mailflow.queue", "mailflow.pipeline",
                                                                "mailflow.smtpd")),
                                           ("mailflow.queue", ("mailflow.relay", "mailflow.pipeline",
                                                               "mailflow.smtpd"))])
def test_the_two_sides_do_not_reach_into_each_other(side, forbidden):
    """The network side never touches a queue directory; the owner side never the network."""
    offenders = [f"{name} imports {target}" for name, targets in graph().items()
                 if name.startswith(side) for target in targets if target.startswith(forbidden)]
    assert offenders == []


def published_names() -> list[str]:
    """Every task name the library and the tasks publish to.

    A ``send_task`` call names its task with a constant of ``mailflow.payloads`` (or a
    string), or forwards a parameter of its function (the queue manager's publisher);
    every use of those constants counts as a name published.
    """
    import mailflow.payloads as payloads

    constants = {n for n in dir(payloads) if getattr(payloads, n) in TASK_NAMES}
    names = []
    for path in modules().values():
        tree = ast.parse(path.read_text())
        names += [getattr(payloads, node.id) for node in ast.walk(tree)
                  if isinstance(node, ast.Name) and node.id in constants]
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = {a.arg for a in func.args.args + func.args.kwonlyargs}
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "send_task":
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant):
                        names.append(arg.value)
                    elif ast.unparse(arg) == "self.name":
                        continue  # a task re-publishing itself (a countdown): registered
                    elif not (isinstance(arg, ast.Name) and (arg.id in constants or arg.id in params)):
                        names.append(f"<not a task name: {ast.unparse(arg)} in {path.name}>")
    return names


def test_every_name_published_is_a_registered_task():
    import tasks  # noqa: F401  (registers them, as celeryconfig's imports do in a worker)

    published = published_names()
    assert len(published) >= 4
    assert [n for n in published if n not in app.tasks] == []
    assert [n for n in TASK_NAMES if n not in app.tasks] == []


def test_a_plugin_written_for_the_old_module_paths_still_loads(tmp_path, monkeypatch):
    """Issue 11: the public names never moved, and 0.1's internal paths still import."""
    (tmp_path / "old_plugin.py").write_text(
        "from mailflow import hooks, outbound\n"
        "from mailflow.codes import OK\n"
        "from mailflow.hmail import HMail\n"
        "from mailflow.mx import MX\n"
        "from mailflow.spool import Spool\n"
        "def route(hmail: HMail, domain, **kwargs):  # what it would connect to hooks.get_mx\n"
        "    return OK, MX(exchange='mx.example')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import warnings

    from mailflow.queue.spool import Spool
    from mailflow.relay.mx import MX

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        plugin = importlib.import_module("old_plugin")
    assert plugin.MX is MX and plugin.Spool is Spool
    assert any("mailflow.hmail is now mailflow.queue.hmail" in str(w.message) for w in seen)
