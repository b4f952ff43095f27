"""``mailflow.record_outcomes``: outcomes from a holder on another host, recorded by the owner
(mailflow/queue/remote_outcomes.py).  Always on the owner's own queue."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.queue.claims import here
from mailflow.queue.remote_outcomes import apply
from mailflow.queue.spool import Spool
from mailflow.runtime.application import app
from mailflow.wire.payloads import RECORD_OUTCOMES, RemoteOutcomes, accepted
from tasks.base import PipelineTask


@app.task(name=RECORD_OUTCOMES, base=PipelineTask)
def record_outcomes(data: dict[str, Any]) -> None:
    cfg = config.current()
    parsed = accepted(RemoteOutcomes.from_json, data, RECORD_OUTCOMES)
    spool = Spool(cfg.queue_path())
    here(spool, parsed.batch)
    apply(spool, parsed, cfg.outbound)
