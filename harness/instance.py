"""One mailflow installation for a test: its own directory, config, queue and state.

Everything mailflow runs as a real process (``mailflow smtpd``, ``celery -A
mailflow worker``, ``celery call``), started with this instance's
environment; output goes to ``logs/`` under the instance directory, which a
failing test prints.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: The ``broker.key`` of this test run's installations: hosts sharing a broker share it.
BROKER_KEY = Fernet.generate_key() + b"\n"


class Proc:
    """A process started by an instance, with its output in a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path):
        self.name, self.popen, self.log = name, popen, log
        self.node = ""  # the Celery node name, for workers

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {text!r} not seen within {timeout} s "
                             f"(exit {self.popen.poll()}); output:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill9(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


class Instance:
    def __init__(self, root: Path, broker_url: str | None = None,
                 config: dict[str, str] | None = None, copy_shipped: bool = True,
                 wrap: Callable[[list[str]], list[str]] | None = None):
        self.root = root
        #: how a command is run on this instance's host (harness/netns.py), if not here
        self.wrap = wrap or (lambda argv: argv)
        self.config_dir = root / "config"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        if copy_shipped:
            shutil.copytree(REPO / "config", self.config_dir, dirs_exist_ok=True)
        else:
            self.config_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (config or {}).items():
            self.write_config(name, text)
        # made at install time, as the README says (workers may start first), and the same
        # on every host that shares a broker: one key for every instance of a test run
        self.make_broker_key()
        self.broker_url = broker_url
        self.procs: list[Proc] = []
        self._serial = 0

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    def make_broker_key(self) -> None:
        key = self.config_dir / "broker.key"
        if not key.exists():
            key.write_bytes(BROKER_KEY)
            key.chmod(0o600)

    def write_config(self, name: str, text: str) -> None:
        (self.config_dir / name).write_text(text)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAILFLOW_BROKER_URL", "CELERY_BROKER_URL")}
        env.update(MAILFLOW_CONFIG=str(self.config_dir), MAILFLOW_STATE_DIR=str(self.root / ".mailflow"),
                   PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        if self.broker_url:
            env["MAILFLOW_BROKER_URL"] = self.broker_url
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              preexec_fn: Callable[[], Any] | None = None, stdin: IO[bytes] | int | None = None) -> Proc:
        self._serial += 1
        log = self.logs / f"{self._serial:02d}-{name}.log"
        out = open(log, "wb")  # noqa: SIM115 - closed by the process' exit
        popen = subprocess.Popen(self.wrap(argv), cwd=self.root, env=env or self.env(), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=stdin or subprocess.DEVNULL,
                                 preexec_fn=preexec_fn)
        out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def mailflow_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mailflow", *args]

    def start_smtpd(self, *, preexec_fn: Callable[[], Any] | None = None, timeout: float = 20.0) -> Proc:
        proc = self.spawn("smtpd", self.mailflow_argv("smtpd"), preexec_fn=preexec_fn)
        proc.wait_for_output("listening on", timeout)
        return proc

    def start_worker(self, name: str = "w1", *, concurrency: int | None = 4, pool: str | None = "threads",
                     extra: list[str] | None = None, timeout: float = 60.0,
                     env: dict[str, str] | None = None) -> Proc:
        node = f"{name}-{os.getpid()}@{socket.gethostname()}"
        argv = [sys.executable, "-m", "celery", "-A", "mailflow", "worker", "-n", node, "--loglevel", "INFO"]
        # None keeps celeryconfig's default (the benchmark measures default settings)
        argv += ["--pool", pool] if pool else []
        argv += ["--concurrency", str(concurrency)] if concurrency else []
        argv += extra or []
        proc = self.spawn(f"worker-{name}", argv, env=self.env(**(env or {})))
        proc.node = node
        proc.wait_for_output(" ready.", timeout)
        return proc

    def run(self, argv: list[str], *, input: bytes | None = None, timeout: float = 60.0,
            **extra_env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.wrap(argv), cwd=self.root, env=self.env(**extra_env), input=input,
                              capture_output=True, timeout=timeout)

    def mailflow(self, *args: str, input: bytes | None = None, timeout: float = 60.0
                 ) -> subprocess.CompletedProcess[bytes]:
        return self.run(self.mailflow_argv(*args), input=input, timeout=timeout)

    def celery(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        return self.run([sys.executable, "-m", "celery", "-A", "mailflow", *args], timeout=timeout)

    def entries(self, state: str = "pending") -> list[Path]:
        """The entries in one state's directory (active/'s claim directories included).

        Read while workers run: a claim directory can go between being listed and being read,
        which os.walk passes over (a glob raised FileNotFoundError)."""
        found = []
        for directory, _dirs, files in os.walk(self.queue_dir / state):
            found += [Path(directory) / name for name in files
                      if not name.startswith(("__tmp__.", "error."))]
        return sorted(found)

    def all_files(self) -> list[Path]:
        """Every file where entries live (pending/, active/, failed/): entries, temp files and
        anything half-written -- not the queue's own bookkeeping (identity, lock, counters).

        Read while workers run: a claim directory may go between being listed and being
        read (os.walk passes over it; rglob raised FileNotFoundError)."""
        found = []
        for place in ("pending", "active", "failed"):
            for directory, _dirs, files in os.walk(self.queue_dir / place):
                found += [Path(directory) / name for name in files]
        return sorted(found)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"==== {p.name} ====\n{p.output()[-3000:]}" for p in self.procs)
