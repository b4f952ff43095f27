"""The shape of the code: sides in folders, tasks on top, no import cycle (issue 11).

The import graph is read from the source (ast), one edge per import statement:
``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``.  A package's own ``__init__`` is not counted as imported by its
submodules (Python runs it first whatever they import), so a cycle here is
one an import statement made.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mailflow.runtime.application import app
from mailflow.wire.payloads import TASK_NAMES

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
    # a package's __getattr__ (PEP 562) imports when its attribute is first used, not when
    # the package is: ``mailflow.app``
    tree.body = [n for n in tree.body if not (path.name == "__init__.py" and
                                              isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
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
    """But a package's ``__getattr__`` (PEP 562): ``mailflow.app`` is made on first use, so
    that importing ``mailflow.hooks`` does not load the product."""
    mods = modules()
    found = []
    for name, path in mods.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and \
                    path.name == "__init__.py":
                continue
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found += [f"{name}:{sub.lineno}" for sub in ast.walk(node)
                          if isinstance(sub, ast.Import | ast.ImportFrom)]
    assert found == []


def loaded_with(start: str, edges: dict[str, set[str]]) -> dict[str, str]:
    """Every module importing ``start`` runs, each with the module that brought it in: its
    imports, theirs, and the packages above each (Python runs a package's ``__init__``
    before anything inside it)."""
    mods = set(edges)
    came_from = {start: ""}
    todo = [start]
    while todo:
        here = todo.pop()
        parts = here.split(".")
        above = {".".join(parts[:i]) for i in range(1, len(parts))} & mods
        for nxt in sorted(edges.get(here, set()) | above):
            if nxt not in came_from:
                came_from[nxt] = here
                todo.append(nxt)
    return came_from


def path_to(target: str, came_from: dict[str, str]) -> str:
    chain = [target]
    while came_from.get(chain[-1]):
        chain.append(came_from[chain[-1]])
    return " <- ".join(chain)


SIDES = ("mailflow.queue", "mailflow.relay", "mailflow.pipeline", "mailflow.smtpd", "mailflow.runtime.worker",
         "tasks")


@pytest.mark.parametrize("side,forbidden", [
    ("mailflow.wire", SIDES),
    ("mailflow.relay", ("mailflow.queue", "mailflow.pipeline", "mailflow.smtpd", "mailflow.runtime.worker",
                        "tasks")),
    ("mailflow.queue", ("mailflow.relay", "mailflow.pipeline", "mailflow.smtpd", "mailflow.runtime.worker",
                        "tasks")),
    ("mailflow.hooks", SIDES),
])
def test_the_sides_do_not_reach_into_each_other_even_through_another_module(side, forbidden):
    """The network side never touches a queue directory, the owner side never the network,
    and what both exchange (``mailflow.wire``) and a plugin's ``mailflow.hooks`` load
    neither -- directly or through any chain of imports (at 7ff0849 ``relay.fence`` reached
    ``queue.entry`` through ``payloads``)."""
    edges = graph()
    offenders = []
    for name in sorted(edges):
        if name == side or name.startswith(side + "."):
            came_from = loaded_with(name, edges)
            offenders += [path_to(t, came_from) for t in came_from
                          if t == forbidden or t.startswith(tuple(f + "." for f in forbidden))
                          or t in forbidden]
    assert offenders == [], "\n".join(offenders[:10])


def test_the_reachability_finder_follows_chains_and_packages():
    edges = {"a": set(), "a.x": {"b.y"}, "b": {"c"}, "b.y": set(), "c": set()}
    assert set(loaded_with("a.x", edges)) == {"a.x", "a", "b.y", "b", "c"}
    assert path_to("c", loaded_with("a.x", edges)) == "c <- b <- b.y <- a.x"


def test_a_plugin_importing_hooks_loads_neither_side():
    """Measured in a fresh interpreter: ``from mailflow import hooks`` (what a plugin does)
    brings in no queue, network, pipeline or worker module, and connects no worker signal."""
    code = ("import sys; from mailflow import hooks, codes; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('mailflow', 'tasks')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert "mailflow.hooks" in loaded
    assert [m for m in loaded if m.startswith(SIDES)] == []


def published_names() -> list[str]:
    """Every task name the library and the tasks publish to.

    A ``send_task`` call names its task with a constant of ``mailflow.wire.payloads`` (or a
    string), or forwards a parameter of its function (the queue manager's publisher);
    every use of those constants counts as a name published.
    """
    import mailflow.wire.payloads as payloads

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
