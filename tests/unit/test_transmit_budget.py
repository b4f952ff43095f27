"""A route out of time hands its unsent entries back to pending/, due now (pipeline/transmit.py)."""

from mailflow import config
from mailflow.pipeline import transmit
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay.mx import MX
from mailflow.wire.payloads import Batch, Route
from tests.support.entries import make_entry


def test_out_of_time_batch_returns_entries_due(tmp_path, monkeypatch):
    monkeypatch.setattr(transmit, "BATCH_TIME_BUDGET", -1.0)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    cfg = config.Config(tmp_path / "config")
    spool = Spool(cfg.queue_path()).ensure()
    spool.write([make_entry("B.1"), make_entry("B.2")], b"m\r\n")
    claim, names = spool.claim(sorted(spool.names()))
    route = Route(batch=Batch(spool.identity, claim, tuple(names), "example.com"), mx=(MX("mx.example.com"),))
    courier = transmit.Courier(cfg, route, None, transmit.LocalLedger(spool, route, cfg.outbound))
    courier.run()
    assert courier.session is None
    back = sorted(spool.names())
    assert [n.id for n in back] == ["B.1", "B.2"]
    assert all(n.next_attempt_ms <= now_ms() and n.num_failures == 0 for n in back)
    assert list(spool.names("active")) == []
