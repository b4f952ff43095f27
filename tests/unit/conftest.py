"""What in-process deliveries leave running is stopped after each test, as a worker's last
step stops it (mailflow/runtime/steps.py): the lease renewer, the metrics sampler and the
connection pool's thread with its idle sessions -- so the thread guard (tests/conftest.py)
sees only what a test itself forgot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailflow.observation.sampler import SAMPLER
from mailflow.queue import claims
from mailflow.relay.pool import POOL


@pytest.fixture(autouse=True)
def stop_process_parts() -> Iterator[None]:
    yield
    claims.RENEWER.stop()
    SAMPLER.stop()
    POOL.stop()
