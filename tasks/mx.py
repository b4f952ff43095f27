"""``mailflow.lookup_mx``: route a batch's entries (mailflow/pipeline/lookup.py), hand each route on.

While worker hosts are about (they say so every few seconds: mailflow/relay/fence.py),
routes go out as parcels to the shared queue, where any worker may take them; else,
and for entries too large for a parcel, to the owner's own queue, without the bytes.
"""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.pipeline.lookup import lookup
from mailflow.queue.identity import owner_queue
from mailflow.relay.fence import HOLDINGS
from mailflow.runtime.application import app
from mailflow.wire.payloads import ACQUIRE_CONNECTION, LOOKUP_MX, Batch, Parcel, Route, accepted
from tasks.base import PipelineTask


@app.task(name=LOOKUP_MX, base=PipelineTask)
def lookup_mx(batch: dict[str, Any]) -> None:
    lookup(accepted(Batch.from_json, batch, LOOKUP_MX), hand_on, lend_out=bool(HOLDINGS.worker_hosts()))


def hand_on(step: Route | Parcel) -> None:
    """A route to the owner's queue (its steps read the queue directory); a parcel to the
    default queue, which every worker consumes unless told not to (``-X``)."""
    queue = owner_queue(step.batch.owner) if isinstance(step, Route) else app.conf.task_default_queue
    app.send_task(ACQUIRE_CONNECTION, args=[step.to_json(config.current().directory)],
                  argsrepr=step.shown(), queue=queue)
