"""Delivery webhooks (issue 16 item 2): each event kept, POSTed signed (Standard Webhooks),
retried with the same webhook-id until accepted; a receiver that hangs slows no delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import uuid as uuidlib
from typing import Any

import pytest

from harness.dnsserver import free_port
from harness.httpsserver import Answer, HTTPSServer, Request
from mailflow.queue import events
from tests.support.pipeline import Env, module_env

SECRET = base64.b64encode(os.urandom(24)).decode()


env = module_env("webhooks", concurrency=16)


@pytest.fixture
def receiver(env: Env):
    """An HTTP receiver on 127.0.0.6 and the webhooks.ini naming it; both gone after."""
    made: list[HTTPSServer] = []

    def make(events: str, answers: list[Answer], name: str = "app", ip: str = "127.0.0.6",
             extra: str = "") -> HTTPSServer:
        server = HTTPSServer(ip, free_port(ip)).start()
        server.routes[ip] = answers
        made.append(server)
        env.inst.write_config("webhooks.ini", f"[{name}]\nurl = http://{ip}:{server.port}/hook\n"
                              f"events = {events}\nsecret = whsec_{SECRET}\ntimeout = 10\n{extra}")
        restart(env)
        return server

    yield make
    env.inst.write_config("webhooks.ini", "")
    for server in made:
        server.stop()
    restart(env)


def restart(env: Env) -> None:
    """webhooks.ini is read at start: a new worker for the module's instance."""
    for proc in [p for p in env.inst.procs if p.name.startswith("worker")]:
        proc.stop()
        env.inst.procs.remove(proc)
    env.inst.start_worker("deliver", concurrency=16)


def send(env: Env, to: str) -> str:
    """Queue through `mailflow send`: a process with the instance's broker, as an application's
    own is (this test process's embedded broker would be another one)."""
    done = env.inst.mailflow("send", "-f", "a@sender.test", to, input=b"Subject: hook\n\nhello\n")
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split("(")[1].split(")")[0]


def event_id(request: Request) -> str:
    return {k.lower(): v for k, v in request.headers.items()}["webhook-id"]


def verified(request: Request) -> dict[str, Any]:
    """The event, once its Standard Webhooks signature is checked."""
    h = {k.lower(): v for k, v in request.headers.items()}  # header names are case-blind
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + request.body
    expected = base64.b64encode(hmac.new(base64.b64decode(SECRET), signed, hashlib.sha256).digest())
    assert h["webhook-signature"] == "v1," + expected.decode()
    return json.loads(request.body)


def test_a_receiver_failing_three_times_gets_each_event_once_as_accepted(env, mx, receiver):
    tag = uuidlib.uuid4().hex[:8]
    gone = f"gone-{tag}@dest.test"
    mx(rcpt={gone: "550 5.1.1 no such user"})
    server = receiver("queued, delivered, bounced", [Answer("no", status=500)] * 3 + [Answer("ok")])
    delivered, bounced = send(env, f"u-{tag}@dest.test"), send(env, gone)
    wanted = {("message.queued", delivered), ("message.queued", bounced),
              ("message.delivered", delivered), ("message.bounced", bounced)}

    def accepted() -> list[Request]:
        return [r for r in server.requests if r.status == 200]

    env.wait(lambda: {(verified(r)["type"], verified(r)["data"]["id"].rsplit(".", 1)[0])
                      for r in accepted()} >= wanted, timeout=60)
    mine = [r for r in accepted() if verified(r)["data"]["id"].rsplit(".", 1)[0] in (delivered, bounced)]
    ids = [event_id(r) for r in mine]
    assert len(ids) == len(set(ids)) == 4  # each event accepted exactly once
    refused = [r for r in server.requests if r.status == 500]
    assert len(refused) == 3 and {event_id(r) for r in refused} <= set(ids)  # retried
    body = {verified(r)["type"]: verified(r) for r in mine if delivered in verified(r)["data"]["id"]}
    data = body["message.delivered"]["data"]
    assert data["domain"] == "dest.test" and data["rcpt_to"] == [f"u-{tag}@dest.test"]
    assert data["response"].startswith("250") and data["host"] and data["ip"] == "127.0.0.2"
    assert data["tls_level"] == "none" and data["mail_from"] == "a@sender.test"
    assert body["message.delivered"]["timestamp"].endswith("Z")
    [bounce] = [verified(r) for r in mine if verified(r)["type"] == "message.bounced"]
    assert bounce["data"]["status"] == "5.1.1" and bounce["data"]["rcpt_to"] == [gone]
    env.wait(lambda: events.backlog(env.inst.queue_dir) == 0)


def test_batched_posts_carry_arrays_of_events_each_accepted_once(env, mx, receiver):
    """``batch = 10``: fewer POSTs than events, each a signed JSON array of at most 10 events
    with their own ids; a refused array comes back, its events each accepted once."""
    mx()
    server = receiver("delivered", [Answer("no", status=500), Answer("ok")], extra="batch = 10\n")
    workers = [p for p in env.inst.procs if p.name.startswith("worker")]
    for proc in workers:  # queued while no worker runs, the 25 are delivered (and kept) together
        proc.stop()
        env.inst.procs.remove(proc)
    tag = uuidlib.uuid4().hex[:8]
    sent = {send(env, f"b{n}-{tag}@dest.test") for n in range(25)}
    env.inst.start_worker("deliver", concurrency=16)

    def own(event: dict[str, Any]) -> bool:  # not an event left by an earlier test
        return event["data"]["id"].rsplit(".", 1)[0] in sent
    env.wait(lambda: {e["data"]["id"].rsplit(".", 1)[0] for r in server.requests if r.status == 200
                      for e in verified(r)} >= sent, timeout=60)
    arrays = [verified(r) for r in server.requests]
    assert all(isinstance(a, list) and 1 <= len(a) <= 10 for a in arrays)
    assert all(e["type"] == "message.delivered" and e["id"].startswith("msg_") for a in arrays for e in a)
    mine = [e["id"] for r in server.requests if r.status == 200 for e in verified(r) if own(e)]
    assert len(mine) == len(set(mine)) == 25  # each event accepted exactly once
    assert max(len([e for e in a if own(e)]) for a in arrays) > 1  # batched
    [refused] = [r for r in server.requests if r.status == 500]
    assert {e["id"] for e in verified(refused) if own(e)} <= set(mine)  # retried, same event ids
    assert event_id(refused).startswith("batch_")


def test_the_batch_of_a_worker_killed_mid_post_is_sent_again(env, mx, receiver):
    """kill -9 while a batch is being POSTed: the batch stays claimed on disk, and once it
    shows no sign of life a new worker sends it again -- every event accepted, the one in
    flight with the same webhook-id."""
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    # an endpoint of its own: an earlier test's events, still owed to its endpoint, would
    # take the held answer, and the kill could come before this test's were written
    hooks = receiver("delivered", [Answer("late", delay=8), Answer("ok")], name=f"killed{tag}")
    sent = {send(env, f"k{n}-{tag}@dest.test") for n in range(5)}
    server.wait_for(5, timeout=30)
    # every outcome recorded, its event written, before the kill: a worker killed between the
    # MX's 250 and the record leaves the entry to wait out its lease (300 s) before it is sent
    # again, and its event comes only then
    env.wait(lambda: all(env.gone(uuid) for uuid in sent), timeout=30)
    env.wait(lambda: hooks.requests, timeout=30)  # the first POST, held by the receiver
    [worker] = [p for p in env.inst.procs if p.name.startswith("worker")]
    worker.kill9()
    env.inst.procs.remove(worker)
    # the batch being POSTed stays claimed on disk (another may have gone meanwhile)
    assert events.backlog(env.inst.queue_dir) >= 1
    env.inst.start_worker("deliver", concurrency=16, env={"MAILFLOW_WEBHOOK_STALE_SECONDS": "3"})

    def accepted() -> list[Request]:
        return [r for r in hooks.requests if r.status == 200]
    env.wait(lambda: {verified(r)["data"]["id"].rsplit(".", 1)[0] for r in accepted()} >= sent, timeout=60)
    assert event_id(hooks.requests[0]) in {event_id(r) for r in accepted()}  # the same id again
    env.wait(lambda: events.backlog(env.inst.queue_dir) == 0)


def test_a_hung_receiver_never_slows_delivery(env, mx, receiver):
    server = mx()
    hung = receiver("delivered", [Answer("late", delay=120)])
    tag = uuidlib.uuid4().hex[:8]
    for n in range(30):
        send(env, f"u{n}-{tag}@dest.test")
    server.wait_for(30, timeout=30)  # the whole batch, while every POST hangs
    assert hung.requests and all(r.status == 0 for r in hung.requests)
    stats = json.loads(env.inst.mailflow("queue", "stats", "--json").stdout)
    assert stats["webhook_backlog"] == 30  # every event kept, none accepted yet


@pytest.mark.parametrize("text,fragment", [
    ("[a]\nurl = ftp://x\nevents = delivered\n", "webhooks.ini:2: url 'ftp://x' is not an http"),
    ("[a]\nurl = http://x/\nevents = delivered, opened\n", "webhooks.ini:3: events must be from"),
    ("[a]\nurl = http://x/\nevents = delivered\nsecret = abc\n", "webhooks.ini:4: secret must be whsec_"),
    ("[a]\nurl = http://x/\n", "webhooks.ini:2: [a] needs url and events"),
    ("[a]\nurl = http://x/\nevents = delivered\nbatch = 0\n", "webhooks.ini:4: batch must be a whole number"),
])
def test_a_malformed_webhooks_ini_is_file_line_and_exit_non_zero(make_instance, text, fragment):
    inst = make_instance()
    inst.write_config("webhooks.ini", text)
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0 and fragment in done.stderr.decode(), done.stderr
