"""Haraka as a relay in the benchmark's harness, beside Postfix when ``node`` is present.

Haraka (npm ``Haraka``, pinned) is installed once into ``$MAILFLOW_BENCH_DIR`` or the
temporary directory (``npm install``: the package registry is all it needs).  Each run
makes a fresh instance with ``haraka -i``, then its own config: ``nodes = cpus``, the
``relay`` plugin with an ACL for loopback (relayed mail goes to Haraka's outbound
queue), a ``get_mx`` plugin that sends every domain to the benchmark's sink (one
address per domain when there are several), TLS off, and the scenario's outbound
concurrency.  It is started with ``haraka -c DIR`` and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import tools

VERSION = "3.3.4"

GET_MX = """\
// every domain to the benchmark's sink: d<n>.sink.test to 127.0.x.y, the rest to 127.0.0.2
exports.hook_get_mx = function (next, hmail, domain) {{
    const m = /^d(\\d+)\\.sink\\.test$/.exec(domain)
    const n = m ? Number(m[1]) : -1
    const host = n >= 0 ? `127.0.${{1 + Math.floor(n / 250)}}.${{1 + (n % 250)}}` : '127.0.0.2'
    next(OK, {{ priority: 0, exchange: host, port: {port} }})
}}
"""


def available() -> str | None:
    """Why Haraka cannot run here, or None."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node is not installed"
    return None


def install() -> Path:
    """The ``haraka`` executable, installed once (npm) in the temporary directory: not in
    the run's directory, which may be a filesystem made for the run (bench/journaled.py)."""
    prefix = Path(tempfile.gettempdir()) / f"mailflow-bench-haraka-{VERSION}"
    binary = prefix / "node_modules" / ".bin" / "haraka"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                               "--prefix", str(prefix), f"Haraka@{VERSION}"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not binary.exists():
            raise RuntimeError(f"npm install Haraka@{VERSION}: {done.stderr.strip()[-500:]}")
    return binary


@contextmanager
def relay(port: int, sink_port: int, *, concurrency: int = 100, per_ip: int = 10,
          workdir: str | None = None) -> Iterator[int]:
    """A running Haraka relaying from 127.0.0.1:``port`` to the sink; yields its master's pid."""
    binary = install()
    with tempfile.TemporaryDirectory(prefix="haraka-bench-", dir=workdir) as tmp:
        root = Path(tmp) / "haraka"
        subprocess.run([str(binary), "-i", str(root)], capture_output=True, check=True, timeout=60)
        conf = root / "config"
        (conf / "smtp.ini").write_text(f"listen=127.0.0.1:{port}\nnodes=cpus\n")
        (conf / "plugins").write_text("relay\nbench_mx\n")
        (conf / "relay.ini").write_text("[relay]\nacl=true\n")
        (conf / "relay_acl_allow").write_text("127.0.0.0/8\n")
        (conf / "outbound.ini").write_text(
            f"enable_tls=false\nlocal_mx_ok=true\nconcurrency_max={concurrency}\n"
            f"pool_concurrency_max={per_ip}\n")
        (conf / "log.ini").write_text("[main]\nlevel=warn\n")
        (conf / "me").write_text("haraka.bench.test\n")
        (root / "plugins").mkdir(exist_ok=True)
        (root / "plugins" / "bench_mx.js").write_text(GET_MX.format(port=sink_port))
        log = open(Path(tmp) / "haraka.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(binary), "-c", str(root)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "NODE_ENV": "production"})
        try:
            tools._wait_listening("127.0.0.1", port, timeout=60)
            yield proc.pid
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()
            time.sleep(0.2)
