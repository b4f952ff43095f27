"""The three brokers the suite runs against: embedded, Redis, RabbitMQ.

Redis and RabbitMQ are required when ``CI`` is set (a missing service fails
the test); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("MAILFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
AMQP_URL = os.environ.get("MAILFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = ("embedded", "redis", "rabbitmq")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if port_open(host, port):
        return
    why = f"{name} is not reachable at {host}:{port} (run `make services` or start it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {why}")
    pytest.skip(why)


def reset(name: str) -> None:
    """Empty what an earlier test left in the broker."""
    if name == "redis":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    elif name == "rabbitmq":
        from kombu import Connection

        with Connection(AMQP_URL) as conn:
            for queue in _rabbit_queues():
                channel = conn.channel()
                try:
                    channel.queue_purge(queue)
                except Exception:  # the queue does not exist yet
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass


def _rabbit_queues() -> list[str]:
    return ["celery", "mailflow", f"mailflow.{socket.gethostname()}"]


def url_for(name: str) -> str | None:
    """The broker URL to give mailflow (None: the embedded default)."""
    if name == "embedded":
        return None
    if name == "redis":
        host, port = "127.0.0.1", 6379
        require("Redis", host, port)
        reset(name)
        return REDIS_URL
    if name == "rabbitmq":
        require("RabbitMQ", "127.0.0.1", 5672)
        reset(name)
        return AMQP_URL
    raise ValueError(name)
