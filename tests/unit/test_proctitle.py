"""The process title's queue counts list the queue: a large backlog refreshes them less often."""

import json

from mailflow import config as configmod
from mailflow import outbound
from mailflow.address import parse_address
from mailflow.observation import proctitle
from mailflow.queue.spool import Spool


def test_refresh_pause_is_the_interval_while_counting_is_cheap():
    assert proctitle.pause_after(0.001) == proctitle.INTERVAL


def test_refresh_never_costs_more_than_its_share_of_a_core():
    # 100,000 entries take about 0.4 s to count: the next count waits 20 s, not 5
    for cost in (0.2, 0.4, 2.0):
        pause = proctitle.pause_after(cost)
        assert cost / pause <= 1 / proctitle.COST_SHARE


def _cfg(tmp_path):
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "me").write_text("mx.sender.example\n")
    return configmod.load(tmp_path)


def test_one_process_counts_the_queue_and_the_others_read_its_numbers(tmp_path, monkeypatch):
    """smtpd, its nodes and the workers show the same host-wide numbers: one lists the queue,
    the others read what it counted until its next count is due."""
    cfg = _cfg(tmp_path)
    Spool(cfg.queue_path()).ensure()
    outbound.queue_message(parse_address("a@sender.example"), [parse_address("r@dest.example")],
                           b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    counted = []
    real = proctitle.stats
    monkeypatch.setattr(proctitle, "stats", lambda spool: counted.append(1) or real(spool))
    shown = []
    monkeypatch.setattr(proctitle.setproctitle, "setproctitle", shown.append)
    smtpd, worker = proctitle.Title("smtpd", cfg), proctitle.Title("worker", cfg)
    smtpd.refresh()
    worker.refresh()
    assert len(counted) == 1
    assert shown[0].split(" ", 2)[2] == shown[1].split(" ", 2)[2]  # the same numbers
    assert "out=0/1/0" in shown[1]
    shared = Spool(cfg.queue_path()).root / proctitle.SHARED
    state = json.loads(shared.read_text())
    shared.write_text(json.dumps({**state, "until": state["until"] - 1000}))
    worker.refresh()  # the count it read is past due: it counts
    assert len(counted) == 2


def test_a_worker_host_s_title_makes_no_queue_directory(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(proctitle.setproctitle, "setproctitle", lambda text: None)
    proctitle.Title("worker", cfg).refresh()
    assert not (tmp_path / "queue").exists()
