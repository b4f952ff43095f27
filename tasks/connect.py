"""``mailflow.acquire_connection``: a session for a route (mailflow/pipeline/acquire.py) or
for a parcel from another host's queue (mailflow/pipeline/parcels.py).

``mailflow.transmit`` goes to this worker node's own queue, where the session is
parked; so does this step again when it waits for a connection slot.  Outcomes
of a parcel go to its owner's queue (``mailflow.record_outcomes``).

A started step is never given back to the broker (``acks_late`` off): a second
run of it elsewhere could send what this one is sending; the claim's lease is
the only way back (docs/architecture.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.utils import worker_direct

from mailflow import config
from mailflow.pipeline.acquire import acquire, route_from
from mailflow.pipeline.parcels import acquire_parcel, owner_here, parcel_from
from mailflow.pipeline.transmit import transmit
from mailflow.queue.identity import owner_queue
from mailflow.runtime.application import app
from mailflow.wire.payloads import (
    ACQUIRE_CONNECTION,
    RECORD_OUTCOMES,
    TRANSMIT,
    Parcel,
    RemoteOutcomes,
    Route,
    is_parcel,
)
from tasks.base import PipelineTask


@app.task(name=ACQUIRE_CONNECTION, base=PipelineTask, bind=True, acks_late=False)
def acquire_connection(self: Any, route: dict[str, Any]) -> None:
    cfg = config.current()
    node: str | None = self.request.hostname
    if is_parcel(route) and not owner_here(route, cfg):
        holder = node or "eager"
        parcel = parcel_from(route, cfg, ACQUIRE_CONNECTION, report_to_owner, holder)
        acquire_parcel(parcel, cfg, partial(_transmit_on, node), partial(_again_on, node) if node else None,
                       report_to_owner, holder)
        return
    parsed = route_from(route, cfg, ACQUIRE_CONNECTION)
    if node:
        acquire(parsed, partial(_transmit_on, node), partial(_again_on, node))
    else:  # called eagerly, not by a worker: no node queue to route to
        acquire(parsed, transmit, None)


def report_to_owner(report: RemoteOutcomes) -> None:
    app.send_task(RECORD_OUTCOMES, args=[report.to_json()], queue=owner_queue(report.batch.owner),
                  argsrepr=report.batch.shown())


def _transmit_on(node: str | None, step: Route | Parcel, ticket: str) -> None:
    """To this node, where the session is parked -- and a parcel's letters are held: they do
    not cross the broker a second time."""
    directory = config.current().directory
    data = step.to_json(directory, letters=False) if isinstance(step, Parcel) else step.to_json(directory)
    app.send_task(TRANSMIT, args=[data, ticket], queue=worker_direct(node) if node else None,
                  argsrepr=step.shown())


def _again_on(node: str, step: Route | Parcel) -> None:
    app.send_task(ACQUIRE_CONNECTION, args=[step.to_json(config.current().directory)],
                  queue=worker_direct(node), argsrepr=step.shown())
