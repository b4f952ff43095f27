"""The README's first section, run as a new user would (issue 24 item 2): its shell blocks,
verbatim, in a copy of the repository's config -- ``make run``, ``mailflow sink``, the
route and the message -- and the message arrives at the sink."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.brokers import port_open

REPO = Path(__file__).resolve().parents[2]


def first_section_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index("## Your first message")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text(errors="replace") if path.exists() else ""
        if text in out:
            return
        assert proc.poll() is None, f"exited {proc.returncode}:\n{out[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen within {timeout} s:\n{path.read_text(errors='replace')[-3000:]}")


def test_the_first_section_delivers_a_first_message(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists() or not shutil.which("curl"):
        why = "the README's steps need the project's .venv made by make, and curl"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)
    for port in (2525, 2526):
        assert not port_open("127.0.0.1", port), f"127.0.0.1:{port}, which the README uses, is taken"
    blocks = first_section_blocks()
    assert len(blocks) == 3 and blocks[0].strip() == "make run"
    work = tmp_path / "checkout"  # the repository as a new user has it, but for the venv made
    work.mkdir()
    shutil.copytree(REPO / "config", work / "config")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, work / name)
    made = (venv / ".installed").stat().st_mtime  # the venv was made from this pyproject.toml
    os.utime(work / "pyproject.toml", (made - 1, made - 1))
    (work / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLOW_", "CELERY_"))}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, block in enumerate(blocks[:2]):  # the two that run until stopped
            log = open(tmp_path / f"block{n}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(["bash", "-c", block], cwd=work, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
            _wait_for(tmp_path / f"block{n}.log", "listening on 127.0.0.1:", procs[-1], 90)
        sent = subprocess.run(["bash", "-e", "-c", blocks[2]], cwd=work, env=env, capture_output=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        _wait_for(tmp_path / "block1.log", "received from=<you@example.com> to=someone@example.net",
                  procs[1], 60)
        assert b"first message" in (work / "sink-mail" / "1.eml").read_bytes()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
