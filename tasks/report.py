"""``mailflow.report``: outcomes from a holder on another host, recorded by the owner
(mailflow/queue/reports.py).  Always on the owner's own queue."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.queue.claims import here
from mailflow.queue.reports import apply
from mailflow.queue.spool import Spool
from mailflow.runtime.application import app
from mailflow.wire.payloads import REPORT, Report, accepted
from tasks.base import PipelineTask


@app.task(name=REPORT, base=PipelineTask)
def report(data: dict[str, Any]) -> None:
    cfg = config.current()
    parsed = accepted(Report.from_json, data, REPORT)
    spool = Spool(cfg.queue_path())
    here(spool, parsed.batch)
    apply(spool, parsed, cfg.outbound)
