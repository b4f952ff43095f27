"""``mailflow.lookup_mx``: route a batch's entries (mailflow/pipeline/lookup.py), hand each route on."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.application import app
from mailflow.payloads import ACQUIRE_CONNECTION, LOOKUP_MX, Batch, Route, accepted
from mailflow.pipeline.lookup import lookup
from mailflow.queue.identity import owner_queue
from tasks.base import PipelineTask


@app.task(name=LOOKUP_MX, base=PipelineTask)
def lookup_mx(batch: dict[str, Any]) -> None:
    lookup(accepted(Batch.from_json, batch, LOOKUP_MX), hand_on)


def hand_on(route: Route) -> None:
    """To the owner's queue: the step reads the queue directory (mailflow/queue/identity.py)."""
    app.send_task(ACQUIRE_CONNECTION, args=[route.to_json(config.current().directory)],
                  argsrepr=route.shown(), queue=owner_queue(route.batch.owner))
