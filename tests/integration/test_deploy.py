"""deploy/: the systemd units pass systemd-analyze; the compose file passes `docker compose config`;
the containers' config requires AUTH over TLS; the image holds no local state (where Docker runs)."""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from harness.dnsserver import free_port
from harness.instance import Instance

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
    for service in ("smtpd", "worker-1", "worker-2", "workerhost", "flower"):  # one broker.key
        assert "/opt/mailflow/config" in service_block(out.stdout, service), service


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


def deployed(root: Path, *, cert: trustme.CA | None, users: str) -> tuple[Instance, int]:
    """An instance on deploy/config/ -- the config compose gives the containers -- as a
    container would run it, but on this host: a free port on every interface, the queue
    in the test's directory."""
    port = free_port("0.0.0.0")  # free on every interface, as the listener binds
    inst = Instance(root, copy_shipped=False)
    shutil.copytree(REPO / "deploy" / "config", inst.config_dir, dirs_exist_ok=True)
    ini = inst.config_dir / "outbound.ini"
    ini.write_text(ini.read_text().replace("/var/spool/mailflow/queue", str(inst.queue_dir))
                   + "disabled = true\n")  # queueing only: entries stay for the assertions
    smtp = inst.config_dir / "smtp.ini"
    smtp.write_text(smtp.read_text().replace("0.0.0.0:2525", f"0.0.0.0:{port}"))
    (inst.config_dir / "auth_flat_file.ini").write_text(
        (inst.config_dir / "auth_flat_file.ini").read_text() + users)
    if cert is not None:
        issued = cert.issue_cert("mailflow.test", "127.0.0.1")
        issued.private_key_pem.write_to_path(str(inst.config_dir / "tls_key.pem"))
        issued.cert_chain_pems[0].write_to_path(str(inst.config_dir / "tls_cert.pem"))
    return inst, port


def test_the_container_config_listens_everywhere_and_relays_only_after_auth_over_tls(tmp_path):
    """deploy/config (issue 24 item 9): smtpd listens on 0.0.0.0; no address relays without
    AUTH, not even loopback; AUTH is not offered before STARTTLS; after it, mail is queued."""
    ca = trustme.CA()
    inst, port = deployed(tmp_path / "mf", cert=ca, users="app = a-long-password\n")
    try:
        proc = inst.start_smtpd()
        assert f"listening on 0.0.0.0:{port}" in proc.output()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls") and not client.has_extn("auth")
            client.mail("a@sender.test")
            code, text = client.rcpt("b@dest.test")
            assert code == 550 and b"5.7.1" in text  # loopback is not in relay_acl_allow
            client.rset()
            context = ssl.create_default_context()
            ca.configure_trust(context)
            client.starttls(context=context)
            client.ehlo("client.test")
            assert "PLAIN" in client.esmtp_features["auth"]
            client.login("app", "a-long-password")
            client.sendmail("a@sender.test", ["b@dest.test"], b"Subject: deployed\r\n\r\nx\r\n")
        assert any(b"Subject: deployed" in p.read_bytes() for p in inst.entries())
        assert "no client can authenticate" not in proc.output()
    finally:
        inst.stop_all()


def test_the_container_config_without_a_certificate_says_nobody_can_authenticate(tmp_path):
    inst, port = deployed(tmp_path / "mf", cert=None, users="app = a-long-password\n")
    try:
        proc = inst.start_smtpd()
        line = proc.wait_for_output("no client can authenticate", timeout=30)
        assert "WARNING" in line and f"0.0.0.0:{port}" in line
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            assert not client.has_extn("auth") and not client.has_extn("starttls")
    finally:
        inst.stop_all()


def _docker_daemon() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def test_the_image_builds_without_local_state_or_secrets_and_runs_on_the_container_config(tmp_path):
    """The image (deploy/Dockerfile) where a Docker daemon runs: built from a checkout after
    `make run` had left a venv, a queue and secrets, it holds none of them, and starts on
    deploy/config. Skipped where no daemon runs (even under CI: the machine decides)."""
    if not _docker_daemon():
        pytest.skip("no Docker daemon on this machine (`docker info` fails)")
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True, timeout=300)
    for leftover in (".venv/bin/python", "queue/pending/x", ".mailflow/broker.key",
                     "config/broker.key", "config/dkim/example.com/private"):
        (checkout / leftover).parent.mkdir(parents=True, exist_ok=True)
        (checkout / leftover).write_text("must not be in the image\n")
    tag = f"mailflow-test:{os.getpid()}"
    built = subprocess.run(["docker", "build", "-q", "-t", tag, "-f", "deploy/Dockerfile", "."],
                           cwd=checkout, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr
    try:
        listing = subprocess.run(["docker", "run", "--rm", tag, "sh", "-c",
                                  "ls -a /opt/mailflow /opt/mailflow/config; mailflow --help"],
                                 capture_output=True, text=True, timeout=300)
        assert listing.returncode == 0, listing.stderr
        names = listing.stdout.split()
        for absent in (".venv", "queue", ".mailflow", "broker.key", "dkim"):
            assert absent not in names, absent
        assert "smtp.ini" in names and "usage: mailflow" in listing.stdout
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=300)
