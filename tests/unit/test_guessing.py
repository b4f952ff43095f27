"""AUTH guessing counted across connections and processes (mailflow/smtpd/guessing.py,
issue 23 item 7): at most ``limit`` passwords are checked per window per address or user."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import redis as redislib

from harness import brokers
from mailflow.smtpd.guessing import Guesses


def _try_many(path: str, redis_url: str | None, results: multiprocessing.Queue) -> None:
    guesses = Guesses(10, 600, Path(path), redis_url)
    checked = sum(1 for _ in range(20) if guesses.attempt("192.0.2.1", "alice")[1] is None)
    results.put(checked)


@pytest.mark.parametrize("store", [None, "redis"])
def test_four_processes_at_once_get_ten_checks_in_all(tmp_path, store):
    url = None
    if store == "redis":
        url = brokers.url_for("redis")
        redislib.Redis.from_url(url).flushdb()
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_try_many, args=(str(tmp_path / "f.json"), url, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sum(results.get(timeout=5) for _ in procs) == 10


def test_a_right_password_is_forgiven_and_the_user_is_counted_apart(tmp_path, caplog):
    g = Guesses(3, 600, tmp_path / "f.json")
    token, locked = g.attempt("192.0.2.1", "bob")
    assert locked is None
    g.forgive(token, "192.0.2.1", "bob")
    for client in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):  # one user, guessed from three addresses
        assert g.attempt(client, "alice")[1] is None
    assert g.attempt("192.0.2.5", "alice") == ("", "user:alice")
    assert g.locked_out("192.0.2.1") is None and g.attempt("192.0.2.1", "bob")[1] is None
    assert [r.getMessage() for r in caplog.records if "locked out" in r.getMessage()] == [
        "auth locked out user=alice: 3 failed AUTH within 600 s; answered 454 4.7.0 without a check "
        "until the window passes"]


def test_the_window_passes(tmp_path):
    g = Guesses(1, 600, tmp_path / "f.json")
    assert g.attempt("192.0.2.1", None)[1] is None
    assert g.locked_out("192.0.2.1") == "client:192.0.2.1"
    g.window = 0.0  # everything counted so far is older than the window now
    assert g.locked_out("192.0.2.1") is None and g.attempt("192.0.2.1", None)[1] is None


def test_a_redis_that_does_not_answer_falls_back_to_the_hosts_file(tmp_path):
    g = Guesses(2, 600, tmp_path / "f.json", "redis://127.0.0.1:1/0")
    assert g.attempt("192.0.2.1", None)[1] is None and g.attempt("192.0.2.1", None)[1] is None
    assert g.attempt("192.0.2.1", None)[1] == "client:192.0.2.1"
    assert os.path.exists(tmp_path / "f.json")
