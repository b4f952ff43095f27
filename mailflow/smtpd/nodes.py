"""The further submission processes of smtp.ini ``nodes``, kept alive as Postfix's master does.

Node 0 is the process the operator started; nodes 1..N-1 share its listeners
(SO_REUSEPORT, each opening them itself).  At start they are forked before any
thread exists, which is cheap and safe.  A node that dies later is started
again -- after 1 s, then with a doubling delay up to a minute while it keeps
dying young, as master(8) throttles a failing service -- by spawning a fresh
``mailflow smtpd --node N`` rather than forking: by then this process runs
threads, and a child forked from it could inherit a lock some thread held.
Every node dies with node 0 (PR_SET_PDEATHSIG), and node 0 stops them on SIGTERM.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: A node that lived at least this long was healthy: its next restart is quick again.
HEALTHY_AFTER = 60.0
#: The longest wait before starting a node that keeps dying.
MAX_BACKOFF = 60.0
#: How often node 0 looks at its nodes.
CHECK_EVERY = 0.5


@dataclass
class Node:
    number: int
    pid: int
    popen: subprocess.Popen[bytes] | None = None  #: None for a forked node
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None

    def exit_status(self) -> int | None:
        """The node's exit status once it has ended (reaped), else None."""
        if self.popen is not None:
            return self.popen.poll()
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        return os.waitstatus_to_exitcode(status) if pid else None


class Nodes:
    """Nodes 1..N-1 of this submission server."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.stopping = False

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes.values() if n.restart_at is None]

    def fork(self, count: int, serve: Callable[[int], int]) -> Nodes:
        """Fork ``count`` nodes, each running ``serve(number)``; call before any thread starts."""
        for number in range(1, count + 1):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    die_with_parent()
                    code = serve(number)
                except BaseException:
                    log.exception("smtpd node %d failed", number)
                finally:
                    logging.shutdown()
                    os._exit(code)
            self.nodes[number] = Node(number, pid, started=time.monotonic())
        return self

    async def supervise(self) -> None:
        """Restart dead nodes until cancelled (run as a task of node 0's event loop)."""
        while not self.stopping:
            await asyncio.sleep(CHECK_EVERY)
            self.check()

    def check(self) -> None:
        now = time.monotonic()
        for node in self.nodes.values():
            if node.restart_at is None:
                status = node.exit_status()
                if status is None or self.stopping:
                    continue
                lived = now - node.started
                node.quick_deaths = 0 if lived >= HEALTHY_AFTER else node.quick_deaths + 1
                delay = min(MAX_BACKOFF, 2.0 ** max(0, node.quick_deaths - 1))
                node.restart_at = now + delay
                log.error("smtpd node %d (pid %d) exited with status %s after %.0f s; "
                          "starting it again in %.0f s", node.number, node.pid, status, lived, delay)
            elif now >= node.restart_at:
                self._spawn(node)

    def _spawn(self, node: Node) -> None:
        argv = [sys.executable, "-m", "mailflow", "smtpd", "--node", str(node.number),
                "--parent", str(os.getpid())]
        try:
            node.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("could not start smtpd node %d: %s", node.number, exc)
            node.restart_at = time.monotonic() + MAX_BACKOFF
            return
        node.pid, node.started, node.restart_at = node.popen.pid, time.monotonic(), None
        log.info("smtpd node %d started again (pid %d)", node.number, node.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node and wait (bounded) for each to end."""
        self.stopping = True
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while node.restart_at is None and node.exit_status() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)


def die_with_parent(parent: int | None = None) -> None:
    """SIGTERM this process when its parent ends; exit now if ``parent`` is already gone."""
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM still stops the nodes
        pass
    if parent is not None and os.getppid() != parent:
        raise SystemExit(0)  # the parent died before the death signal was armed
