"""The pipeline tests' world: a test DNS zone, MX servers on 127.0.0.x at one port, a worker,
and a way to queue mail and watch what happens to it (test_delivery, test_failures, ...)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import brokers
from harness.dnsserver import SERVFAIL, DNSServer, free_port
from harness.instance import Instance
from harness.mxserver import MX_PORT
from harness.waiting import until
from mailflow import config as configmod
from mailflow import outbound
from mailflow.address import parse_address
from mailflow.codes import OK
from mailflow.queue import entry as qfile
from mailflow.queue.entry import EntryName
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import Spool, now_ms
from mailflow.queue.todo import ToDo
from mailflow.wire.names import tenant_tag

PORT = MX_PORT

ZONES: dict[str, Any] = {
    "dest.test": {"MX": [(10, "mx.dest.test")]},
    "mx.dest.test": {"A": ["127.0.0.2"]},
    "mx.test": {"A": ["127.0.0.2"]},
    "failover.test": {"MX": [(10, "dead.failover.test"), (20, "live.failover.test")]},
    "dead.failover.test": {"A": ["127.0.0.9"]},
    "live.failover.test": {"A": ["127.0.0.2"]},
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test")]},
    "a.equal.test": {"A": ["127.0.0.2"]},
    "b.equal.test": {"A": ["127.0.0.3"]},
    "implicit.test": {"A": ["127.0.0.2"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "broken.test": SERVFAIL,
    "dual.test": {"MX": [(10, "dual.host.test")]},
    "dual.host.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "sender.test": {"MX": [(10, "mx.dest.test")]},
}

PLUGIN = '''
import json, os
from types import SimpleNamespace
from mailflow import hooks
from mailflow.codes import OK

LOG = os.path.join(os.path.dirname(os.environ["MAILFLOW_STATE_DIR"]), "delivered.jsonl")

@hooks.get_mx.connect
def route(hmail, domain, **kwargs):
    notes = hmail.todo.notes
    if "mx" in notes:
        return OK, notes["mx"]
    if "mx_object" in notes:
        return OK, SimpleNamespace(**notes["mx_object"])

@hooks.delivered.connect
def seen(hmail, **kw):
    with open(LOG, "a") as f:
        f.write(json.dumps({"id": hmail.todo.uuid, "secured": kw["secured"], "mode": kw["mode"],
                            "tls_level": kw["tls_level"],
                            "ok": kw["ok_recips"], "host": kw["host"], "ip": kw["ip"],
                            "port": kw["port"], "response": kw["response"],
                            "params": kw["params"]}) + "\\n")
'''


def scheduled(inst: Instance) -> str:
    """What ``celery inspect scheduled`` lists, as text (its ETA tasks with their args)."""
    return inst.celery("inspect", "scheduled", "--json", timeout=60).stdout.decode()


#: What a process logs when it has taken up a changed outbound.ini.
RELOADED = "reloaded outbound.ini"


class Env:
    """A worker on a broker, the test DNS server, and a way to queue and watch mail."""

    def __init__(self, inst: Instance, dns: DNSServer, base: dict[str, str] | None = None):
        self.inst, self.dns = inst, dns
        self.base = {"nameservers": f"127.0.0.1:{dns.port}", "mx_port": str(PORT),
                     "local_mx_ok": "true", "enable_tls": "false", "queue_dir": str(inst.queue_dir),
                     "temp_fail_intervals": "1h", **(base or {})}
        self.configure()

    def configure(self, **keys: Any) -> None:
        """Rewrite outbound.ini, and wait until every running process of the instance has
        said it reloaded it (each looks once a second: mailflow/runtime/steps.py)."""
        values = {**self.base, **{k: str(v) for k, v in keys.items()}}
        path = self.inst.config_dir / "outbound.ini"
        running = [p for p in self.inst.procs if p.popen.poll() is None
                   and p.name.startswith(("worker", "smtpd", "run"))]
        seen = {id(p): p.output().count(RELOADED) for p in running}
        path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
        later = time.time_ns() + 2 * 10**9
        os.utime(path, ns=(later, later))  # a new mtime even within the same tick
        configmod.load(self.inst.config_dir)
        self.wait(lambda: all(p.output().count(RELOADED) > seen[id(p)] for p in running
                              if p.popen.poll() is None), timeout=30)

    def send(self, to: list[str] | str, *, notes: dict[str, Any] | None = None,
             body: str = "Subject: test\n\nhello\n", sender: str = "a@sender.test") -> str:
        configmod.load(self.inst.config_dir)  # this process may have queued for another instance
        code, text = outbound.send_email(sender, to, body, notes=notes)
        assert code is OK, text
        return text.split("(")[1].rstrip(")")

    def delivered_log(self) -> list[dict[str, Any]]:
        path = self.inst.root / "delivered.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait(self, what: Callable[[], Any], timeout: float = 30.0) -> Any:
        return until(what, timeout, lambda: "\n" + self.inst.dump_logs()[-4000:])

    def delivered_record(self, uuid: str) -> dict[str, Any]:
        """What the delivered hook saw for the message, once it was delivered."""
        [seen] = self.wait(lambda: [e for e in self.delivered_log() if e["id"].startswith(uuid)])
        return seen

    def deferral(self, uuid: str) -> dict[str, Any]:
        """The recipient status of the message's one entry, once it was deferred."""
        [entry] = self.wait(lambda: [e for e in self.entries("pending", uuid) if e.num_failures])
        [status] = entry.todo.record["rcpt_status"].values()
        return status

    def logged(self, text: str) -> bool:
        return any(text in p.output() for p in self.inst.procs)

    def logs(self) -> str:
        """Everything the instance's processes wrote (dump_logs keeps only their ends)."""
        return "".join(p.output() for p in self.inst.procs)

    def entries(self, state: str, uuid: str) -> list[HMail]:
        """The message's entries in ``state``, as they are now: one claimed or renamed
        between the listing and its reading is passed over, not an error."""
        found = []
        for path in self.inst.entries(state):
            if f"_{uuid}." in path.name:
                try:
                    found.append(HMail.load(path))
                except FileNotFoundError:
                    continue
        return found

    def gone(self, uuid: str) -> bool:
        """No entry of this message is left anywhere in the queue: delivered, bounced or dropped,
        and no step of it still working (a claim holds its entries until it is done)."""
        return not [p for p in self.inst.all_files() if f"_{uuid}." in p.name]

    def bounce_id(self, uuid: str) -> str:
        """The queue id of the bounce made for this message, from its ``bounced`` line."""
        found = re.search(rf"bounced id={re.escape(uuid)}\S* .*?bounce_id=(\S+)", self.logs())
        assert found, f"no bounce was made for {uuid}"
        return found.group(1)

    def due(self, uuid: str) -> list[Path]:
        """The message's entries waiting in pending/ to be claimed now (by name: no file is
        read, so one moved meanwhile is no error)."""
        now = time.time() * 1000
        return [p for p in self.inst.entries("pending")
                if f"_{uuid}." in p.name and int(p.name.split("_")[0]) <= now]

    def settled(self, uuid: str) -> bool:
        """Nothing of this message is waiting for a worker or in flight."""
        return not self.due(uuid) and not [p for p in self.inst.entries("active") if f"_{uuid}." in p.name]


def make_env(tmp: Path, broker: str | None, plugin: str = PLUGIN, base: dict[str, str] | None = None,
             worker_name: str = "deliver", files: dict[str, str] | None = None,
             **worker: Any) -> tuple[Env, Instance]:
    """``files``: config files the worker starts with (shaping.ini is read only at start)."""
    dns = DNSServer(ZONES).start()
    inst = Instance(tmp, broker_url=broker, config={"me": "mailflow.test\n", "plugins": "delivery_plugin\n",
                                                    **(files or {})})
    (inst.config_dir / "delivery_plugin.py").write_text(plugin)
    try:
        env = Env(inst, dns, base)
        inst.start_worker(worker_name, **worker)
    except BaseException:  # a worker that did not start leaves neither it nor the DNS running
        inst.stop_all()
        dns.stop()
        raise
    return env, inst


def with_listener(env: Env) -> None:
    """A submission listener for the instance on a free loopback port, through which this
    host (127.0.0.1) may relay: ``env.smtp_port``."""
    port = free_port()
    env.inst.write_config("smtp.ini", f"listen = 127.0.0.1:{port}\n")
    env.inst.write_config("relay_acl_allow", "127.0.0.1\n")
    env.inst.start_smtpd()
    env.smtp_port = port  # type: ignore[attr-defined]


def module_env(name: str, broker: str | None = None, plugin: str = PLUGIN, *,
               brokers_: list[str] | None = None, setup: Callable[..., None] | None = None,
               needs: tuple[str, ...] = (), base: dict[str, str] | None = None,
               environ: dict[str, str] | None = None, files: dict[str, str] | None = None,
               **worker: Any) -> Any:
    """A module's ``env`` fixture: one worker, the test DNS and an instance for the module,
    stopped after it (``env = module_env("routes")`` at the top of a test module).

    ``brokers_``: one instance per broker name (``env.broker`` says which); ``setup(env,
    *needs)``: what the module adds before its tests (a listener, a key, a restarted
    worker), given the fixtures named in ``needs``; ``base``: outbound.ini keys every test
    starts from; ``environ``: variables the worker starts with; ``files``: config files it
    starts with; ``worker``: its start options."""

    @pytest.fixture(scope="module", params=brokers_)
    def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
        which = getattr(request, "param", None)
        url = brokers.url_for(which) if which else broker
        saved = {k: os.environ.get(k) for k in environ or {}}
        os.environ.update(environ or {})
        try:
            made, inst = make_env(tmp_path_factory.mktemp(f"{name}-{which}" if which else name), url,
                                  plugin=plugin, base=base, files=files, **worker)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        made.broker = which  # type: ignore[attr-defined]
        try:
            if setup is not None:
                setup(made, *(request.getfixturevalue(fixture) for fixture in needs))
            yield made
        finally:
            inst.stop_all()
            made.dns.stop()

    return env


def write_due(pending: Path, count: int, domain: str, notes: dict[str, Any], *, after_ms: int = 0,
              now: int | None = None) -> None:
    """``count`` one-recipient entries, due ``after_ms`` after ``now`` (by default, the time
    of the call), written as the queue writes them (a temp name, then a rename) but without
    an fsync each: the test is about what comes after.  Due a little later, they are all
    there when the queue manager claims them."""
    Spool(pending.parent).ensure()  # a worker host until its queue appears (mailflow/runtime/worker.py)
    sender = parse_address("a@sender.test")
    body = b"Subject: many\r\n\r\nx\r\n"
    now = now_ms() if now is None else now
    tenant = notes.get("tenant")
    stem = f".t{tenant_tag(tenant)}" if tenant else ""  # as the queue tags a tenant's entries
    for n in range(count):
        todo = ToDo(uuid=f"many{n:06d}{stem}.1", queue_time=now, domain=domain, mail_from=sender,
                    rcpt_to=[parse_address(f"u{n}@{domain}")], notes=notes)
        name = EntryName(now + after_ms, 0, now, todo.uuid, domain)
        tmp = pending / f"{qfile.TMP_PREFIX}{os.getpid()}.{name}"
        tmp.write_bytes(qfile.encode_header(todo) + body)
        os.rename(tmp, pending / str(name))
