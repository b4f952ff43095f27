"""``mailflow.bounce``: a delivery status notification for each failed entry (mailflow/queue/bounces.py)."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.queue.bounces import bounce_each
from mailflow.queue.spool import Spool
from mailflow.runtime.application import app
from mailflow.wire.payloads import BOUNCE, Batch, accepted
from tasks.base import PipelineTask


@app.task(name=BOUNCE, base=PipelineTask)
def bounce(batch: dict[str, Any]) -> None:
    bounce_each(Spool(config.current().queue_path()), accepted(Batch.from_json, batch, BOUNCE))
