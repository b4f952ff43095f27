"""`celery -A mailflow worker` works from an installed wheel in a fresh venv, outside the tree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def test_worker_starts_from_an_installed_wheel(tmp_path):
    dist = tmp_path / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                 "-w", str(dist), str(REPO)])
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("mailflow-*.whl")
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    installed = run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"  # no source tree; a config dir of one file: the rest defaults
    (work / "config").mkdir(parents=True)
    (work / "config" / "me").write_text("wheel.test\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MAILFLOW_BROKER_URL", "CELERY_BROKER_URL", "MAILFLOW_CONFIG")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = run([str(py), "-c", "import mailflow, tasks, celeryconfig; print(mailflow.__file__)"],
                cwd=work, env=env)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    node = f"wheel-{os.getpid()}@{socket.gethostname()}"
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([str(venv / "bin" / "celery"), "-A", "mailflow", "worker", "-n", node,
                               "--pool", "threads", "--loglevel", "INFO"], cwd=work, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in (tmp_path / "worker.log").read_bytes():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        ping = run([str(venv / "bin" / "celery"), "-A", "mailflow", "inspect", "ping", "--json",
                    "-d", node, "--timeout", "10"], cwd=work, env=env)
        assert node in json.loads(ping.stdout), ping.stderr
        helped = run([str(venv / "bin" / "mailflow"), "--help"], cwd=work, env=env)
        assert helped.returncode == 0 and "usage: mailflow" in helped.stdout
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
