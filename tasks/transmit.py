"""``mailflow.transmit``: a route's messages over its parked session (mailflow/pipeline/transmit.py)."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.application import app
from mailflow.errors import NothingToDo
from mailflow.payloads import TRANSMIT
from mailflow.pipeline.acquire import route_from
from mailflow.pipeline.transmit import drop_ticket
from mailflow.pipeline.transmit import transmit as transmit_route
from tasks.base import PipelineTask


@app.task(name=TRANSMIT, base=PipelineTask)
def transmit(route: dict[str, Any], ticket: str | None = None) -> None:
    ticket = ticket if isinstance(ticket, str) else None
    try:
        parsed = route_from(route, config.current(), TRANSMIT)
    except NothingToDo:
        drop_ticket(ticket)  # its parked session goes back to the pool
        raise
    transmit_route(parsed, ticket)
