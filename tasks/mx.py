"""``mailflow.lookup_mx``: route a batch's entries (mailflow/pipeline/lookup.py), hand each route on."""

from __future__ import annotations

from typing import Any

from mailflow import config
from mailflow.application import app
from mailflow.payloads import ACQUIRE_CONNECTION, LOOKUP_MX, Batch, Route, accepted
from mailflow.pipeline.lookup import lookup
from tasks.base import PipelineTask


@app.task(name=LOOKUP_MX, base=PipelineTask)
def lookup_mx(batch: dict[str, Any]) -> None:
    parsed = accepted(Batch.from_json, batch, LOOKUP_MX)
    if parsed is not None:
        lookup(parsed, hand_on)


def hand_on(route: Route) -> None:
    app.send_task(ACQUIRE_CONNECTION, args=[route.to_json(config.current().directory)],
                  argsrepr=route.shown())
