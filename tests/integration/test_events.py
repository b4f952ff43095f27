"""Task events (what Flower shows) leave a real worker on Redis gathered into a few
publishes -- the worker's own and the task-sent events of whoever publishes a task -- and
an event receiver gets every one of them."""

from __future__ import annotations

import ast
import base64
import json
import time
from typing import Any

import redis

from harness import brokers
from harness.mxserver import MXServer
from tests.support.pipeline import PORT, make_env

MESSAGES = 30
TERMINAL = {"task-succeeded", "task-failed", "task-rejected", "task-revoked"}


def events_of(data: bytes) -> list[dict[str, Any]]:
    """The events in one published message (kombu's envelope; ``task.multi`` holds a list)."""
    envelope = json.loads(data)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    found = json.loads(body)
    return found if isinstance(found, list) else [found]


def test_task_events_are_published_together_and_none_is_lost(tmp_path):
    url = brokers.url_for("redis")
    assert url is not None
    feed = redis.Redis.from_url(url).pubsub()
    feed.psubscribe("*celeryev*")
    env, inst = make_env(tmp_path, url)
    server = MXServer("127.0.0.2", PORT).start()
    try:
        route = {"mx": {"exchange": "127.0.0.2", "port": PORT}}
        learned = inst.queue_dir / "sites"  # each domain known to travel alone: a batch each
        learned.mkdir(parents=True, exist_ok=True)
        for n in range(MESSAGES):
            (learned / f"d{n}.events.test").write_text("")
        for n in range(MESSAGES):  # three tasks each
            env.send(f"u@d{n}.events.test", notes=route)
        server.wait_for(MESSAGES)
        names: dict[str, str] = {}  # task id -> name, from task-received
        ended: dict[str, dict[str, Any]] = {}
        publishes = events = 0

        def delivered() -> int:
            """What the transmit steps said they delivered (their results, as Flower shows)."""
            return sum(ast.literal_eval(e["result"]).get("delivered", 0) for uuid, e in ended.items()
                       if names.get(uuid) == "mailflow.transmit" and e["type"] == "task-succeeded")

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = feed.get_message(timeout=1.0)
            if message is None or message["type"] != "pmessage":
                if delivered() >= MESSAGES and names and set(names) <= set(ended):
                    break
                continue
            found = [e for e in events_of(message["data"]) if e.get("type", "").startswith("task-")]
            if not found:
                continue
            publishes += 1
            events += len(found)
            for event in found:
                if event["type"] == "task-received":
                    names[event["uuid"]] = event["name"]
                elif event["type"] in TERMINAL:
                    ended[event["uuid"]] = event
        missing = set(names) - set(ended)
        assert delivered() == MESSAGES, (delivered(), len(names), len(ended))
        assert not missing, f"{len(missing)} tasks received and never seen to end"
        assert len(names) >= MESSAGES  # lookups, acquisitions and transmits
        print(f"{len(names)} tasks, {events} events in {publishes} publishes")
        # four events a task -- sent (by the queue manager or the step before), received,
        # started, ended -- in a handful of publishes, where publishing each as it came
        # made one publish for every event sent and every two or so of the others
        assert events == 4 * len(names)
        assert publishes * 6 <= events, (publishes, events)
    finally:
        feed.close()
        server.stop()
        inst.stop_all()
        env.dns.stop()
