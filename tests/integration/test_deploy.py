"""deploy/: the systemd units pass systemd-analyze; the compose file passes `docker compose config`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ["mailflow-smtpd.service", "mailflow-worker@.service", "mailflow-flower.service",
         "mailflow-workerhost@.service"]


def test_systemd_units_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed on this machine")
    venv = Path(sys.executable).parent.parent
    rendered = []
    for unit in UNITS:
        text = (REPO / "deploy" / "systemd" / unit).read_text()
        text = text.replace("/opt/mailflow/.venv", str(venv)).replace("/opt/mailflow", str(REPO))
        target = tmp_path / (unit.replace("@.", "@1.") if "@." in unit else unit)
        target.write_text(text)
        rendered.append(str(target))
    (tmp_path / "mailflow-worker@.service").write_text((tmp_path / "mailflow-worker@1.service").read_text())
    out = subprocess.run(["systemd-analyze", "verify", *rendered], capture_output=True, text=True,
                         env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}, timeout=120)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "mailflow" in line and "Failed to" not in line.split(":")[0]]
    assert out.returncode == 0, out.stdout + out.stderr
    assert not [p for p in problems if "Unknown" in p or "not executable" in p], problems


def test_compose_file_is_valid():
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        argv = ["docker", "compose"]
    elif os.environ.get("CI"):
        pytest.fail("CI is set and no compose client is installed (tests/services.sh installs one)")
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    out = subprocess.run([*argv, "-f", str(REPO / "deploy" / "compose.yaml"), "config"],
                         capture_output=True, text=True, env={**os.environ, "FLOWER_BASIC_AUTH": "a:b"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for service in ("redis", "smtpd", "worker-1", "worker-2", "workerhost", "flower"):
        assert f"{service}:" in out.stdout
    assert "spool" not in service_block(out.stdout, "workerhost")  # a worker host has no queue
    assert "spool" in service_block(out.stdout, "smtpd")


def service_block(config: str, name: str) -> str:
    """One service's lines of `compose config` output (services are indented by two)."""
    lines = config.splitlines()
    start = lines.index(f"  {name}:")
    end = next((i for i in range(start + 1, len(lines))
                if lines[i][:3].strip() and not lines[i].startswith("    ")), len(lines))
    return "\n".join(lines[start:end])


def test_flower_config_reads_the_environment():
    env = {**os.environ, "FLOWER_PORT": "5999", "FLOWER_MAX_TASKS": "77"}
    code = ("import runpy; c = runpy.run_path('deploy/flower/flowerconfig.py'); "
            "print(c['port'], c['max_tasks'], c['persistent'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["5999", "77", "False"]


def test_units_allow_a_descriptor_per_connection():
    """The default soft limit (1024) is less than smtp.ini's max_connections (issue 10, item 16)."""
    for unit in ("mailflow-smtpd.service", "mailflow-worker@.service", "mailflow-workerhost@.service"):
        text = (REPO / "deploy" / "systemd" / unit).read_text()
        [limit] = [line for line in text.splitlines() if line.startswith("LimitNOFILE=")]
        assert int(limit.split("=")[1]) >= 65536
