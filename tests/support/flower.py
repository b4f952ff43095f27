"""Flower started for a test, and known to be hearing the workers' events before the test
sends anything.

"Visit me at" is printed before Flower's event receiver has its queue bound: on a busy host
the first task events could be published before it listened (the embedded broker fans out
to the queues bound at that moment), and a test waiting for a task's state in Flower then
waited for events it had missed. Flower's own ``/metrics`` shows a worker online
(``flower_worker_online``) once it has received that worker's heartbeat, which comes
every two seconds: the receiver is live then.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from harness.instance import Instance, Proc
from harness.waiting import until

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "flower" / "flowerconfig.py"


def start_flower(inst: Instance, port: int, auth: str, address: str = "127.0.0.1",
                 timeout: float = 60.0,
                 within: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Proc:
    """``celery flower`` with the shipped config on ``address:port`` (basic auth ``auth``),
    returned once it has heard a worker's heartbeat; ``within`` is where this process must
    be to reach ``address`` (a test host's network namespace)."""
    env = inst.env(FLOWER_PORT=str(port), FLOWER_BASIC_AUTH=auth,
                   **({"FLOWER_ADDRESS": address} if address != "127.0.0.1" else {}))
    proc = inst.spawn("flower", [sys.executable, "-m", "celery", "-A", "mailflow", "flower",
                                 f"--conf={CONF}"], env=env)
    proc.wait_for_output("Visit me at", timeout=timeout)
    until(lambda: _online(_metrics(address, port, auth, within)), timeout,
          "for Flower to hear a worker's heartbeat (its receiver listening)")
    return proc


def flower_get(address: str, port: int, auth: str, path: str,
               within: Callable[[], AbstractContextManager[Any]] = nullcontext) -> bytes:
    """The body of Flower's ``path``, asked with basic auth ``auth``."""
    request = urllib.request.Request(f"http://{address}:{port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with within(), urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def flower_api(address: str, port: int, auth: str, path: str,
               within: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Any:
    """Flower's JSON answer for ``path`` (``/api/tasks``...)."""
    return json.loads(flower_get(address, port, auth, path, within))


def _metrics(address: str, port: int, auth: str,
             within: Callable[[], AbstractContextManager[Any]]) -> str:
    try:
        return flower_get(address, port, auth, "/metrics", within).decode()
    except (OSError, urllib.error.URLError):
        return ""


def _online(page: str) -> bool:
    return any(line.startswith("flower_worker_online{") and line.endswith(" 1.0")
               for line in page.splitlines())
