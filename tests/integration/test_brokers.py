"""The Celery app on each broker: a real worker process starts and answers remote control."""

from __future__ import annotations

import json

from harness.instance import Instance


def test_worker_runs_on_each_broker(make_instance, broker):
    inst: Instance = make_instance(broker_url=broker)
    worker = inst.start_worker("brokertest")
    out = inst.celery("inspect", "ping", "--json", "--timeout", "10", "-d", worker.node)
    assert out.returncode == 0, out.stderr.decode() + worker.output()[-2000:]
    replies = json.loads(out.stdout)
    assert any(name.startswith("brokertest-") for name in replies)
    stats = json.loads(inst.celery("inspect", "conf", "--json", "--timeout", "10",
                                   "-d", worker.node).stdout)
    conf = next(iter(stats.values()))
    assert conf["task_acks_late"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"]
    assert conf["worker_send_task_events"] is True


def test_broker_url_comes_from_the_environment(make_instance):
    inst: Instance = make_instance()
    script = "import mailflow; print(mailflow.app.conf.broker_url)"
    import sys

    embedded = inst.run([sys.executable, "-c", script])
    assert embedded.stdout.strip() == b"filesystem://localhost//"
    assert b"No hostname was supplied" not in embedded.stderr  # kombu's warning, at every call
    out = inst.run([sys.executable, "-c", script], CELERY_BROKER_URL="redis://127.0.0.1:6379/3")
    assert out.stdout.strip() == b"redis://127.0.0.1:6379/3"
    out = inst.run([sys.executable, "-c", script], MAILFLOW_BROKER_URL="amqp://u:p@127.0.0.1//",
                   CELERY_BROKER_URL="redis://x")
    assert out.stdout.strip() == b"amqp://u:p@127.0.0.1//"
    assert (inst.root / ".mailflow" / "broker" / "queue").is_dir()
