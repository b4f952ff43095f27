"""Postfix as a relay in the benchmark's harness: the peer measured in the same run.

A private instance (Debian's package, installed by bench/postfix-tools.sh): its own
main.cf and master.cf, queue and data directories under the benchmark's temporary
directory, started with ``postfix -c DIR start`` (as root, as Postfix always is)
and stopped at the end.  The system's default instance is never started.

It relays everything that arrives on its port to one nexthop (``relayhost``) or,
given ``routes``, each recipient domain to a nexthop of its own
(``transport_maps``), with TLS off both ways, as mailflow runs in the same
scenario; the concurrency settings are the scenario's.  Postfix fsyncs every
queue file before its 250, as mailflow does.

It logs as a stock Debian Postfix does, to syslog, not to a ``maillog_file`` of its own:
writing that file through postlogd made it 15 % slower at 64 KiB than ``postfix start``
on the system's own instance in the same run (bench/README.md, "The honest peer").
Without a syslog daemon its log lines go nowhere, so the peer is measured without the
cost of logging that mailflow pays: a ratio can only flatter Postfix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import tools

#: The daemons of master.cf.dist a relay needs, none chrooted (the bench's directory
#: holds no copy of /etc): name, type, private, unprivileged, chroot, wakeup, limit, command.
SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> str | None:
    """Why Postfix cannot run as a relay here, or None."""
    if not shutil.which("postfix"):
        return "postfix is not installed (bench/postfix-tools.sh installs it as root)"
    if os.geteuid() != 0:
        return "a Postfix instance is started as root"
    return None


def version() -> str:
    done = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main_cf(root: Path, nexthop: str, *, concurrency: int, processes: int, routes: bool) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
myhostname = relay.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
relayhost = {nexthop}
{f"transport_maps = texthash:{root}/conf/transport" if routes else ""}
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
biff = no
append_dot_mydomain = no
default_process_limit = {processes}
default_destination_concurrency_limit = {concurrency}
smtp_destination_concurrency_limit = {concurrency}
initial_destination_concurrency = {min(concurrency, 5)}
"""


@contextmanager
def relay(port: int, nexthop: str, *, concurrency: int = 20, processes: int = 100,
          routes: dict[str, str] | None = None, workdir: str | None = None) -> Iterator[int]:
    """A running private Postfix relaying from 127.0.0.1:``port``; yields its master's pid."""
    with tempfile.TemporaryDirectory(prefix="postfix-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        conf = root / "conf"
        for d in (conf, root / "spool", root / "data"):
            d.mkdir()
        (root / "data").chmod(0o755)
        shutil.chown(root / "data", "postfix")
        (conf / "main.cf").write_text(main_cf(root, nexthop, concurrency=concurrency, processes=processes,
                                              routes=bool(routes)))
        (conf / "master.cf").write_text(f"127.0.0.1:{port} inet n - n - - smtpd\n" + SERVICES)
        if routes:
            (conf / "transport").write_text("".join(f"{d} smtp:{hop}\n" for d, hop in routes.items()))
        os.chmod(root, 0o755)
        ctl = ["postfix", "-c", str(conf)]
        done = subprocess.run([*ctl, "start"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"postfix start: {done.stderr.strip() or done.stdout.strip()}")
        try:
            tools._wait_listening("127.0.0.1", port, timeout=30)
            yield _master_pid(root)
        finally:
            subprocess.run([*ctl, "stop"], capture_output=True)
            _wait_gone(root)


def _master_pid(root: Path) -> int:
    deadline = time.monotonic() + 10
    pid_file = root / "spool" / "pid" / "master.pid"
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
    raise RuntimeError(f"no Postfix master pid in {pid_file}")


def _wait_gone(root: Path) -> None:
    """The master exits after its children: wait, so the next round starts clean."""
    pid_file = root / "spool" / "pid" / "master.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
