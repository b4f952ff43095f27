"""``mailflow.acquire_connection``: a session for a route (mailflow/pipeline/acquire.py).

``mailflow.transmit`` goes to this worker node's own queue, where the session is
parked; so does this step again when it waits for a connection slot.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.utils import worker_direct

from mailflow import config
from mailflow.application import app
from mailflow.payloads import ACQUIRE_CONNECTION, TRANSMIT, Route
from mailflow.pipeline.acquire import acquire, route_from
from mailflow.pipeline.transmit import transmit
from tasks.base import PipelineTask


@app.task(name=ACQUIRE_CONNECTION, base=PipelineTask, bind=True)
def acquire_connection(self: Any, route: dict[str, Any]) -> None:
    parsed = route_from(route, config.current(), ACQUIRE_CONNECTION)
    node: str | None = self.request.hostname
    if node:
        acquire(parsed, partial(_transmit_on, node), partial(_again_on, node))
    else:  # called eagerly, not by a worker: no node queue to route to
        acquire(parsed, transmit, None)


def _transmit_on(node: str, route: Route, ticket: str) -> None:
    app.send_task(TRANSMIT, args=[route.to_json(config.current().directory), ticket],
                  queue=worker_direct(node), argsrepr=route.shown())


def _again_on(node: str, route: Route) -> None:
    app.send_task(ACQUIRE_CONNECTION, args=[route.to_json(config.current().directory)],
                  queue=worker_direct(node), argsrepr=route.shown())
