"""The private library names mailflow relies on are where it expects them (issue 10, item 6)."""

from __future__ import annotations

import aiosmtpd.smtp
import pytest

from mailflow.runtime import compat


def test_every_private_name_relied_on_is_there():
    found = compat.problems()
    assert found == [], "\n".join(["a library changed what mailflow relies on:", *found])


def test_a_missing_name_is_reported_in_one_clear_line(monkeypatch):
    monkeypatch.delattr(aiosmtpd.smtp.SMTP, "_set_post_data_state")
    [line] = compat.problems()
    assert line.startswith("aiosmtpd 1.4.")
    assert "aiosmtpd.smtp.SMTP._set_post_data_state is gone" in line


def test_a_changed_signature_is_reported(monkeypatch):
    async def smtp_DATA(self, arg, extra):  # noqa: N802
        pass

    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "smtp_DATA", smtp_DATA)
    [line] = compat.problems()
    assert "SMTP.smtp_DATA takes (self, arg, extra), not (self, arg)" in line


def test_the_check_stops_a_process(monkeypatch, capsys):
    monkeypatch.delattr(aiosmtpd.smtp.SMTP, "_handle_client")
    with pytest.raises(SystemExit) as exc:
        compat.check_or_exit()
    assert exc.value.code == 2
    assert "_handle_client is gone" in capsys.readouterr().err


# ── every private part used is listed (issue 25 item 6) ─────────────────────────────────

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


#: Names with a leading underscore that are documented, public API (os._exit, namedtuple's),
#: or that Python's class machinery sets on every ABC and Protocol.
DOCUMENTED = {"_exit", "_asdict", "_replace", "_fields", "_make", "_abc_impl", "_is_protocol",
              "_is_runtime_protocol"}


def _private(name: str) -> bool:
    """A library's private name: ``_x``, not ``__x__`` nor enum's documented ``_x_``."""
    return name.startswith("_") and not name.startswith("__") and not name.endswith("_") and \
        name not in DOCUMENTED


def _relied_names() -> set[str]:
    """Each name RELIED covers: the parts of its path, and the names its source check quotes."""
    import re

    names: set[str] = set()
    for item in compat.RELIED:
        names.update(item.path.split("."))
        if item.source_has:
            names.update(re.findall(r"\b_\w+", item.source_has))
    return names


def _ours() -> set[str]:
    """Every name mailflow itself defines: functions, classes, attributes it assigns, names."""
    import ast

    found: set[str] = set()
    for path in (REPO / "mailflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                found.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found.add(node.target.id)
    return found


def test_every_private_attribute_of_a_library_that_mailflow_reads_is_listed():
    """An attribute ``_x`` that mailflow reads and never defines is a library's private part:
    it must be in compat.RELIED, so that a release that moves it stops mailflow at start
    with a line saying so, not halfway through a session."""
    import ast

    ours, relied, unlisted = _ours(), _relied_names(), set()
    for path in (REPO / "mailflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours and \
                    node.attr not in relied:
                unlisted.add(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
    assert sorted(unlisted) == []


def test_every_library_private_method_mailflow_overrides_is_listed():
    """A method ``_x`` of a mailflow class that a library base class also has overrides a
    private part of that library (aiosmtpd's ``_getaddr``, smtplib's ``_get_socket``)."""
    import importlib
    import inspect
    import pkgutil

    import mailflow

    relied, unlisted = _relied_names(), []
    for info in pkgutil.walk_packages(mailflow.__path__, "mailflow."):
        if info.name in ("mailflow.__main__",):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            external = [base for base in cls.__mro__[1:] if not base.__module__.startswith("mailflow")
                        and base is not object]
            for name in vars(cls):
                if _private(name) and any(name in vars(base) for base in external) and \
                        name not in relied:
                    unlisted.append(f"{cls.__module__}.{cls.__name__}.{name}")
    assert unlisted == []
