"""A worker's long-lived parts are Celery bootsteps (issue 25 item 3): a warm shutdown stops
every one of them, in order, and leaves no thread of mailflow's running -- after it has
delivered (the lease renewer and the pool's reaper started) and with the metrics endpoint
bound, on the embedded broker and on Redis (where the renewal broadcast runs too)."""

from __future__ import annotations

import signal

import pytest

from harness import brokers
from harness.dnsserver import free_port
from harness.mxserver import MX_PORT, MXServer
from tests.support.pipeline import make_env


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_a_warm_shutdown_stops_every_part_and_leaves_no_thread(tmp_path, broker):
    url = None if broker == "embedded" else brokers.url_for("redis")
    env, inst = make_env(tmp_path / "node", url)
    mx = MXServer("127.0.0.2", MX_PORT).start()
    try:
        inst.write_config("metrics.ini", f"listen = 127.0.0.1:{free_port()}\n")
        worker = inst.procs[0]
        worker.stop()
        inst.procs.remove(worker)
        worker = inst.start_worker("parts")
        worker.wait_for_output("metrics on http://", timeout=30)
        env.send("someone@dest.test")
        mx.wait_for(1, timeout=30)  # a delivery: the lease renewer and the pool's thread ran
        assert worker.stop(signal.SIGTERM, timeout=60) == 0  # warm, and not killed at the deadline
        out = worker.output()
        assert "every mailflow part stopped" in out, out[-3000:]
        assert "still running after the worker stopped" not in out
        assert "did not stop within" not in out
    finally:
        mx.stop()
        inst.stop_all()
        env.dns.stop()
