"""Hosts as Linux network namespaces, made and removed by the test itself (root only).

A *switch* namespace holds a bridge; each host is a namespace joined to it by a
veth pair, with one address in a /24 of its own.  The root namespace gets no
new address or route: only the hosts' addresses (and each host's loopback) are
ever targets.

Processes run in a host through ``ip netns exec`` (:meth:`Host.wrap`); sockets
of this test process are made in a host with :meth:`Host.entered`, which moves
the calling thread there (``setns``) for the duration -- a server started
inside keeps its sockets and threads there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"iproute2 cannot list namespaces: {exc}"
    return None


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    dev: str

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in this host's namespace while the block runs."""
        keep = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{self.ns}")
            yield
        finally:
            try:
                if _libc.setns(keep, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original namespace")
            finally:
                os.close(keep)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self) -> int:
        """kill -9 of every process of this host, as when it loses power."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def cut_from(self, other: Host) -> None:
        """Every packet from here to ``other`` dropped (a broken link, from this side)."""
        _ip("route", "add", "blackhole", f"{other.ip}/32", ns=self.ns)

    def mend_to(self, other: Host) -> None:
        _ip("route", "del", "blackhole", f"{other.ip}/32", ns=self.ns)


#: Our namespaces: ``mf<pid of the test process><2 random digits>-<host>``.
OURS = re.compile(r"mf(\d+)\d\d-")


def sweep_stale() -> int:
    """Remove the namespaces of test processes that died without cleaning up (kill -9)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = 0
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        found = OURS.match(name)
        if not found or Path(f"/proc/{found.group(1)}").exists():
            continue
        Host(name, name, "", "").kill_all()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        removed += 1
    return removed


class Net:
    """Hosts on one switch; :meth:`close` kills what runs in them and removes everything."""

    def __init__(self) -> None:
        sweep_stale()
        self.tag = f"mf{os.getpid()}{random.randrange(100):02d}"
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 2
        ns = f"{self.tag}-{name}"
        here, there = f"{self.tag}h{index}", f"{self.tag}s{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", here, "netns", ns)
        _ip("link", "set", there, "netns", self.switch)
        _ip("link", "set", there, "master", "br0", "up", ns=self.switch)
        host = Host(name, ns, f"{self.subnet}.{index}", here)
        _ip("addr", "add", f"{host.ip}/24", "dev", here, ns=ns)
        _ip("link", "set", here, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_all()
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
