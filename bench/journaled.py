"""Where the relays keep their queues while measured: a journaled ext4 of the run's own.

A mail host's spool is on a journaled filesystem.  The disk of the machines these figures
come from is an ext4 *without* a journal (no ``/proc/fs/jbd2`` entry for it), and there
ext4 does not give out again an inode freed in the last minute or so: each new file's
allocation steps past every inode the queue freed lately, reading each one's inode-table
block (``recently_deleted`` under ``find_inode_bit``, in ``perf``).  A queue that creates
and deletes hundreds of files a second made creating one cost 0.4 to 1 ms of system CPU
there -- against 0.13 ms on a journaled ext4 on the same disk -- and the cost grew with
the churn of the minute before, the *other* relay's in an interleaved round.  Both relays
create a file per message, so the figures measured a property of that disk as much as
theirs (bench/README.md, sixth session).

So a run makes an image file, a journaled ext4 on it (``mkfs.ext4``, inode tables and
journal written at once: no background initialisation during the run) mounted over a
loop device, and runs every relay's installation and queue there.  That needs root and
loop devices; elsewhere, or when ``$MAILFLOW_BENCH_DIR`` names a place, the run says so
and uses that place or the temporary directory as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.relay import WORKDIR_ENV

#: The image's size: sparse, so only what the queues hold at once takes room on the disk.
IMAGE_BYTES = 16 * 1024**3
#: Where the image file is made (not /tmp, whose block groups the test suite churns).
IMAGE_DIR = "/var/tmp"


def unavailable() -> str | None:
    """Why no journaled filesystem can be made here, or None."""
    if os.environ.get(WORKDIR_ENV):
        return f"${WORKDIR_ENV} is set"
    if os.geteuid() != 0:
        return "not root (mounting needs it)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    """Point ``$MAILFLOW_BENCH_DIR`` at a fresh journaled ext4 for the run, and yield a line
    saying where the queues live (the temporary directory, and why, when none can be made)."""
    why = unavailable()
    if why is not None:
        yield f"Queues in {os.environ.get(WORKDIR_ENV) or tempfile.gettempdir()} ({why})."
        return
    fd, image = tempfile.mkstemp(prefix="mailflow-bench-fs-", suffix=".img", dir=IMAGE_DIR)
    mount = tempfile.mkdtemp(prefix="mailflow-bench-mnt-")
    mounted = False
    try:
        try:
            os.ftruncate(fd, IMAGE_BYTES)
            os.close(fd)
            fd = -1
            _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image)
            _run("mount", "-o", "loop", image, mount)
            mounted = True
            os.chmod(mount, 0o1777)  # as /tmp: Postfix's and Haraka's users make files there too
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # the run goes on
            yield f"Queues in {tempfile.gettempdir()} (no journaled filesystem: {exc})."
            return
        os.environ[WORKDIR_ENV] = mount
        yield f"Queues on a journaled ext4 of the run's own (loop device, {mount})."
    finally:
        os.environ.pop(WORKDIR_ENV, None)
        if fd >= 0:
            os.close(fd)
        if mounted:
            _unmount(mount)
        with contextlib.suppress(OSError):
            os.rmdir(mount)
        with contextlib.suppress(OSError):
            os.unlink(image)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])}: {done.stderr.strip()[-300:]}")


def _unmount(mount: str) -> None:
    """Unmount; lazily when a straggler process still holds a file there (the image is
    freed once it lets go)."""
    if subprocess.run(["umount", mount], capture_output=True, timeout=120).returncode != 0:
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=120)
