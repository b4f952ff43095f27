"""Warm-up allowances (mailflow/relay/warmup.py): counted per UTC day of use, a message the
receiver did not take given back, under one lock for every process of the host."""

from __future__ import annotations

import datetime

import pytest

from mailflow.config.egress import Source
from mailflow.relay import warmup

DAY1 = datetime.date(2026, 12, 1)


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(tmp_path))


def test_each_day_of_use_has_its_own_cap_then_none():
    source = Source("s", "127.0.0.4", "s.test", warmup=(2, 3))
    assert warmup.allowance(source, DAY1) == warmup.Allowance(0, 2)  # never used yet
    assert [warmup.take(source, DAY1) for _ in range(3)] == [True, True, False]
    day2 = DAY1 + datetime.timedelta(days=1)
    assert warmup.allowance(source, day2) == warmup.Allowance(2, 3)
    assert [warmup.take(source, day2) for _ in range(4)] == [True, True, True, False]
    assert warmup.allowance(source, day2 + datetime.timedelta(days=1)) == warmup.Allowance(3, None)


def test_a_message_given_back_frees_its_place_that_day_only():
    source = Source("s", "127.0.0.4", "s.test", warmup=(2, 2))
    assert warmup.take(source, DAY1) and warmup.take(source, DAY1)
    warmup.give_back(source, DAY1)
    assert warmup.allowance(source, DAY1).left == 1
    assert warmup.take(source, DAY1) and not warmup.take(source, DAY1)
    warmup.give_back(source, DAY1 - datetime.timedelta(days=1))  # a day that is over: nothing
    assert warmup.allowance(source, DAY1).left == 0
    day2 = DAY1 + datetime.timedelta(days=1)
    assert warmup.take(source, day2)
    warmup.give_back(source, DAY1)  # taken yesterday: today's count is not touched
    assert warmup.allowance(source, day2).left == 1


def test_a_source_without_warmup_is_never_counted():
    source = Source("s", "127.0.0.4", "s.test")
    assert warmup.take(source, DAY1) and warmup.allowance(source, DAY1).left is None
    warmup.give_back(source, DAY1)
    assert not (warmup.state_dir() / warmup.DIRECTORY).exists()
