"""broker.key is made once, whole, however many processes of a new install start together."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from mailflow.wire import seal


def _make(directory: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    barrier.wait()
    try:
        out.put(("ok", seal._key_text(Path(directory)).decode()))
    except Exception as exc:  # a reader that found the file half-written: what this guards
        out.put(("error", repr(exc)))


def test_processes_starting_together_all_read_one_whole_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):  # a fresh directory each round: the race is in the first moment
        directory = tmp_path / f"config{round_}"
        directory.mkdir()
        barrier, out = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_make, args=(str(directory), barrier, out)) for _ in range(8)]
        for proc in procs:
            proc.start()
        answers = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(60)
        assert {kind for kind, _ in answers} == {"ok"}, answers
        assert len({key for _, key in answers}) == 1  # every process uses the same key
        assert (directory / seal.KEY_FILE).read_text().strip() == answers[0][1]
        assert os.stat(directory / seal.KEY_FILE).st_mode & 0o777 == 0o600
        assert [p.name for p in directory.iterdir()] == [seal.KEY_FILE]  # no temporary left


def test_the_key_file_never_exists_without_its_key(tmp_path, monkeypatch):
    """While the key's bytes are being written, no process can find broker.key: it appears,
    whole, by a link (it used to be created empty and then written: a process reading it in
    that moment stopped with 'not a key')."""
    path = tmp_path / seal.KEY_FILE
    real_write = os.write
    seen: list[bool] = []

    def write(fd: int, data: bytes) -> int:
        seen.append(path.exists())
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    seal._create(path)
    assert seen == [False]
    assert len(path.read_bytes().strip()) == 44
