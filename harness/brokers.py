"""The three brokers the suite runs against: embedded, Redis, RabbitMQ.

Redis and RabbitMQ are required when ``CI`` is set (a missing service fails
the test); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess

import pytest

BROKERS = ("embedded", "redis", "rabbitmq")


def _xdist_index() -> int:
    """Which of pytest-xdist's parallel test processes this is (0 when run alone)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


#: Each parallel test process has a broker of its own: a Redis database (9, 10, ...; kombu
#: prefixes its fanout channels with the database, so broadcasts stay apart too) and a
#: RabbitMQ virtual host, so that one test's flush or purge never reaches another's.
REDIS_URL = os.environ.get("MAILFLOW_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{9 + _xdist_index()}")
VHOST = "/" if _xdist_index() == 0 else f"mailflow-test-{_xdist_index()}"
AMQP_URL = os.environ.get("MAILFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
                          + ("" if VHOST == "/" else VHOST))


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


def redis_idle() -> bool:
    """Nothing of this test process's Redis broker can still reach a worker: no message is
    waiting in a queue and none is handed out unacknowledged (kombu keeps those in the
    ``unacked`` hash and gives them out again after the visibility timeout)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    queues = [key for key in client.scan_iter(count=1000) if client.type(key) == b"list"]
    return client.hlen("unacked") == 0 and all(client.llen(key) == 0 for key in queues)


def _rabbit_queues() -> list[str]:
    return ["celery", "mailflow", f"mailflow.{socket.gethostname()}"]


@functools.cache
def _ensure_vhost() -> None:
    """Make this test process's RabbitMQ virtual host (rabbitmqctl: the broker's host, root)."""
    if VHOST == "/" or "MAILFLOW_TEST_AMQP_URL" in os.environ:
        return
    for argv in (["add_vhost", VHOST], ["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]):
        try:
            done = subprocess.run(["rabbitmqctl", *argv], capture_output=True, text=True, timeout=60)
            why = "" if done.returncode == 0 or "already exists" in done.stderr + done.stdout else \
                f"rabbitmqctl {' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"rabbitmqctl: {exc}"
        if why:
            why = f"cannot make RabbitMQ virtual host {VHOST} for a parallel test run ({why}; " \
                  "run as root, or set MAILFLOW_TEST_AMQP_URL, or TEST_PROCS=1)"
            if os.environ.get("CI"):
                pytest.fail(f"CI is set and {why}")
            pytest.skip(why)


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
        _ensure_vhost()
        reset(name)
        return AMQP_URL
    raise ValueError(name)
