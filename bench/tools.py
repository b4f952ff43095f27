"""The benchmark's load generator and destination: Postfix's tools when installed, else ours.

Postfix's ``smtp-source`` and ``smtp-sink`` (Debian package ``postfix``) are what
the peers' figures in the benchmarks issue were measured with, so they are
preferred.  ``bench.ownsource`` and ``bench.ownsink`` stand in for them on a
machine without Postfix, and always serve the latency run, which needs to
match each message's 250 with its arrival at the sink.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")


def have_postfix_tools() -> bool:
    return bool(shutil.which("smtp-source") and shutil.which("smtp-sink"))


class Sink:
    """One SMTP sink process and what it reported: sessions and message arrival times."""

    def __init__(self, host: str, port: int, *, postfix: bool, delay: float = 0.0, wait: float = 0.0):
        """``delay``: our sink holds every reply; ``wait``: smtp-sink holds its DATA reply."""
        self.host, self.port, self.postfix = host, port, postfix
        self.sessions = 0
        self.arrivals: list[float] = []  # one time per message, in arrival order
        self.by_rcpt: dict[str, float] = {}  # own sink only: recipient -> arrival
        self._cond = threading.Condition()
        if postfix:
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            held = ["-w", f"{wait:g}"] if wait else []
            argv = ["smtp-sink", "-c", *user, *held, f"{host}:{port}", "1024"]
        else:
            argv = [sys.executable, "-m", "bench.ownsink", host, str(port), str(delay or wait)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
        threading.Thread(target=self._read, daemon=True).start()
        _wait_listening(host.split(",")[-1], port)

    @property
    def name(self) -> str:
        return "smtp-sink" if self.postfix else "bench.ownsink"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        if self.postfix:
            self._read_counters()
        else:
            self._read_events()

    def _read_counters(self) -> None:
        """smtp-sink -c rewrites one counter line (CR-separated) at every event."""
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):  # type: ignore[attr-defined]
            now = time.time()
            found = _COUNTERS.findall(chunk)
            if not found:
                continue
            sess, mesg = (int(x) for x in found[-1])
            with self._cond:
                self.sessions = sess
                self.arrivals.extend([now] * (mesg - len(self.arrivals)))
                self._cond.notify_all()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.decode().strip().partition(" ")
            with self._cond:
                if kind == "S":
                    self.sessions += 1
                elif kind == "M":
                    at, _, rcpt = rest.partition(" ")
                    self.arrivals.append(float(at))
                    self.by_rcpt[rcpt] = float(at)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` messages have arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.arrivals) >= count, timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Injection:
    """One run of the injector: when it started and ended, and each message's 250 time."""

    def __init__(self, argv: list[str], *, postfix: bool):
        self.postfix = postfix
        self.started = time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
        self.queued: dict[int, float] = {}
        self.errors: list[str] = []
        self.ended = 0.0

    def wait(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=timeout)
        self.ended = time.time()
        for line in out.decode(errors="replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "F":
                self.started = float(rest)
            elif kind == "Q":
                n, at = rest.split()
                self.queued[int(n)] = float(at)
            elif kind == "X" or (self.postfix and line.strip()):
                self.errors.append(line)
        if self.proc.returncode:
            self.errors.append(f"injector exit {self.proc.returncode}")


def inject(port: int, *, messages: int, size: int, sessions: int, postfix: bool,
           domains: int = 0, plan: Path | None = None,
           http: tuple[str, str, int, int] | None = None) -> Injection:
    """Closed loop: ``sessions`` parallel clients, one connection per message (to ``domains``
    recipient domains, d0.sink.test..., or as ``plan`` says (bench/mix.py): our injector
    only); ``http`` (URL, key, recipients per request, clients): through the HTTP API."""
    if http is not None:
        url, key, per_request, clients = http
        argv = [sys.executable, "-m", "bench.httpsource", url, key, "--messages", str(messages),
                "--size", str(size), "--per-request", str(per_request), "--clients", str(clients)]
    elif plan is not None:
        argv = [sys.executable, "-m", "bench.ownsource", "127.0.0.1", str(port), "--plan", str(plan),
                "--sessions", str(sessions)]
    elif postfix:
        argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                "-M", "source.test", "-f", "bench@sender.test", "-t", "r@sink.test", f"127.0.0.1:{port}"]
    else:
        argv = [sys.executable, "-m", "bench.ownsource", "127.0.0.1", str(port), "--size", str(size),
                "--messages", str(messages), "--sessions", str(sessions), "--domains", str(domains)]
    return Injection(argv, postfix=postfix and http is None and plan is None)


def inject_at_rate(port: int, *, rate: float, duration: float, size: int) -> Injection:
    """Open loop: one message every 1/rate seconds, each on its own connection."""
    argv = [sys.executable, "-m", "bench.ownsource", "127.0.0.1", str(port), "--size", str(size),
            "--rate", str(rate), "--duration", str(duration)]
    return Injection(argv, postfix=False)


def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"sink not listening on {host}:{port}")


def checkout(commit: str) -> Path | None:
    """A work tree of ``commit`` beside the repository's (``git worktree``), for a peer run of
    mailflow as it was; None when this is not a git clone or the commit is unknown."""
    repo = Path(__file__).resolve().parents[1]
    where = Path(tempfile.mkdtemp(prefix=f"mailflow-{commit}-"))
    done = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(where), commit],
                          capture_output=True)
    if done.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        return None
    return where


def remove_checkout(where: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)], capture_output=True)
    shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def python_path(tree: Path) -> Iterator[None]:
    """Processes started meanwhile (mailflow smtpd, celery workers) import mailflow from ``tree``."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
