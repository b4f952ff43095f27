"""The queue's counters (queue/counters.py): one byte appended per event, by any number of
threads and processes, with the files kept open by each process (a bounded few)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mailflow.queue import counters


def _open_counter_files(root: Path) -> set[str]:
    """The files under ``root`` this process has open."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.add(target)
    return out


def test_threads_adding_at_once_lose_no_count(tmp_path: Path):
    def adds() -> None:
        for _ in range(500):
            counters.add(tmp_path, "delivered")
            counters.add_outcome(tmp_path, "bounced", {})

    threads = [threading.Thread(target=adds) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.read(tmp_path, "delivered") == 4000
    assert counters.read(tmp_path, "bounced") == 4000
    assert counters.read_tenant(tmp_path, counters.NO_TENANT, "bounced") == 4000


def test_a_counter_added_to_stays_open_and_no_more_than_the_bound_are(tmp_path: Path):
    counters.add(tmp_path, "delivered")
    assert str(tmp_path / ".counters" / "delivered") in _open_counter_files(tmp_path)
    for n in range(counters.KEEP_OPEN * 3):  # per-destination counters can be many
        counters.add_reply(tmp_path, "ok", f"d{n}.test")
        counters.add_reply(tmp_path, "ok", f"d{n}.test")
    assert len(_open_counter_files(tmp_path)) <= counters.KEEP_OPEN
    assert counters.read(tmp_path, "delivered") == 1
    replies = counters.replies(tmp_path)
    assert len(replies) == counters.KEEP_OPEN * 3 and set(replies.values()) == {2}


def test_a_forked_child_adds_to_the_same_files(tmp_path: Path):
    counters.add(tmp_path, "delivered")  # open in the parent before the fork
    pid = os.fork()
    if pid == 0:  # the child: its own descriptors, the same files
        try:
            for _ in range(100):
                counters.add(tmp_path, "delivered")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    counters.add(tmp_path, "delivered")
    assert counters.read(tmp_path, "delivered") == 102
