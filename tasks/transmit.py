"""``mailflow.transmit``: a route's messages over its parked session (mailflow/pipeline/transmit.py),
or a parcel's (mailflow/pipeline/parcels.py).  Never redelivered once started (tasks/connect.py)."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.errors import NothingToDo
from mailflow.pipeline.acquire import route_from
from mailflow.pipeline.parcels import owner_here, parcel_from, transmit_parcel
from mailflow.pipeline.transmit import drop_ticket
from mailflow.pipeline.transmit import transmit as transmit_route
from mailflow.runtime.application import app
from mailflow.wire.payloads import TRANSMIT, is_parcel
from tasks.base import PipelineTask
from tasks.connect import report_to_owner


@app.task(name=TRANSMIT, base=PipelineTask, bind=True, acks_late=False)
def transmit(self: Any, route: dict[str, Any], ticket: str | None = None) -> None:
    cfg = config.current()
    ticket = ticket if isinstance(ticket, str) else None
    try:
        if is_parcel(route) and not owner_here(route, cfg):
            holder = self.request.hostname or "eager"
            parcel = parcel_from(route, cfg, TRANSMIT, report_to_owner, holder)
            transmit_parcel(parcel, ticket, cfg, report_to_owner, holder)
            return
        parsed = route_from(route, cfg, TRANSMIT)
    except NothingToDo:
        drop_ticket(ticket)  # its parked session goes back to the pool
        raise
    transmit_route(parsed, ticket)
