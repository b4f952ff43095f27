"""Group commit of the queue directory's fsync (mailflow/queue/dirsync.py; issue 14).

The directory's real fsync runs, wrapped so that the test can hold one in progress and
see the writers that arrive meanwhile wait, then share a single following fsync.
"""

from __future__ import annotations

import threading

import pytest

from harness.waiting import until
from mailflow.queue import dirsync
from mailflow.queue import entry as qfile


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync of a directory, as (start, end) event numbers; the first can be held."""
    real = qfile.fsync_dir
    log: list[str] = []
    hold = threading.Event()
    held = threading.Event()
    lock = threading.Lock()

    def recorded(path):
        with lock:
            first = not log
            log.append("start")
        if first:
            held.set()
            hold.wait(30)
        real(path)
        with lock:
            log.append("end")

    monkeypatch.setattr(qfile, "fsync_dir", recorded)
    return log, hold, held


def test_writers_that_arrive_during_an_fsync_share_the_next_one(tmp_path, fsyncs):
    log, hold, held = fsyncs
    group = dirsync.DirectorySync(tmp_path)
    first = threading.Thread(target=group.sync)
    first.start()
    assert held.wait(10)  # the first fsync is in progress; it began before the others' renames
    later = [threading.Thread(target=group.sync) for _ in range(5)]
    for t in later:
        t.start()
    until(lambda: group.waiting == 5, 10, "the five later writers wait")
    assert log == ["start"]  # none of them started an fsync of its own
    hold.set()
    for t in [first, *later]:
        t.join(10)
    assert log == ["start", "end", "start", "end"]  # six writers, two fsyncs


def test_a_writer_never_returns_on_an_fsync_that_began_before_it(tmp_path, fsyncs):
    log, hold, held = fsyncs
    group = dirsync.DirectorySync(tmp_path)
    first = threading.Thread(target=group.sync)
    first.start()
    assert held.wait(10)
    returned = threading.Event()
    second = threading.Thread(target=lambda: (group.sync(), returned.set()))
    second.start()
    until(lambda: group.waiting == 1, 10, "the second writer waits")
    hold.set()  # the first fsync ends: it does not cover the second writer
    second.join(10)
    assert returned.is_set() and log == ["start", "end", "start", "end"]


def test_an_fsync_error_reaches_every_writer_it_was_to_cover(tmp_path, monkeypatch):
    group = dirsync.DirectorySync(tmp_path / "gone")  # fsync of a missing directory fails
    with pytest.raises(OSError):
        group.sync()
    with pytest.raises(OSError):
        dirsync.sync_dir(tmp_path / "gone")


def test_many_concurrent_writers_all_return_and_each_is_covered(tmp_path, monkeypatch):
    real = qfile.fsync_dir
    starts: list[int] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def counted(path):
        with lock:
            starts.append(next(counter))
        real(path)

    monkeypatch.setattr(qfile, "fsync_dir", counted)
    covered: list[bool] = []

    def writer() -> None:
        for _ in range(20):
            with lock:
                before = len(starts)  # fsyncs begun before this writer's "rename"
            dirsync.sync_dir(tmp_path)
            with lock:
                covered.append(len(starts) > before)  # one began after it

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(covered) == 160 and all(covered)
