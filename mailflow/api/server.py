"""The HTTP injection API's listener: ``POST /api/inject/v1``, ``POST /api/v1/send/raw``,
``GET /api/openapi.json``, on aiohttp beside the SMTP listener in each submission process.

A request is answered 200 only once every message it queues is on disk and fsync'd, and it
is queued whole or not at all (mailflow/queue/staging.py).  Each message is queued as one
from SMTP would be: the ``queue_outbound`` hook, the suppression list, DKIM, the ``queued``
log line (``client=http:<key name>``), events and counters.  The work that touches the
disk or runs plugins is done in a thread, never on the loop that serves SMTP.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mailflow import hooks
from mailflow import logs as logsmod
from mailflow.address import Address, AddressError, parse_address
from mailflow.api import idempotency, openapi
from mailflow.api import requests as apireq
from mailflow.api.compose import ComposeError, Composer
from mailflow.api.keys import ANY_TENANT, ApiKey, Keys
from mailflow.api.ratelimit import RateLimiter
from mailflow.codes import DENY, DENYSOFT, OK
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.config.settings import format_hostport
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE
from mailflow.message import Body
from mailflow.queue import staging
from mailflow.queue.spool import Spool
from mailflow.queue.submission import Prepared, QueueError, announce, prepare_message
from mailflow.smtpd.handler import Connection, Transaction, logs_safe
from mailflow.suppress import store as suppression
from mailflow.wire import dsnparams

log = logging.getLogger("mailflow.api")

INJECT = "/api/inject/v1"
SEND_RAW = "/api/v1/send/raw"
OPENAPI = "/api/openapi.json"
#: Commit records are swept at most this often (s).
EXPIRE_EVERY = 600.0


class Refused(Exception):
    """An answer other than 200, with its JSON body."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers or {}


@dataclass
class Outgoing:
    """One message a request asks for, before it is queued."""

    mail_from: Address
    rcpt_to: list[Address]
    data: bytes
    label: str  #: what failed_recipients names when it fails
    index: int = 0  #: its place in the request: failures are listed in the request's order


#: (its place in the request, what failed_recipients names, why) for each recipient
#: refused before queueing
Refusals = list[tuple[int, str, str]]


@dataclass
class Outcome:
    """What a request's messages came to, as the answer says it."""

    queued: list[Prepared] = field(default_factory=list)
    taken: int = 0  #: accepted by a queue_outbound receiver, not queued by mailflow
    failures: Refusals = field(default_factory=list)

    def fail(self, index: int, label: str, why: str) -> None:
        self.failures.append((index, label, why))

    @property
    def failed(self) -> list[str]:
        return [label for _, label, _ in sorted(self.failures, key=lambda f: f[0])]

    @property
    def errors(self) -> list[str]:
        return [f"{label}: {why}" for _, label, why in sorted(self.failures, key=lambda f: f[0])]


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


class Api:
    """The endpoints of one submission process."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.keys = Keys(cfg.directory)
        self.limiter = RateLimiter(cfg.shared_redis())
        self.spool = Spool(cfg.queue_path())
        self._expired = 0.0

    # -- the edge ---------------------------------------------------------------------------

    async def authenticate(self, request: web.Request) -> ApiKey:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        try:
            key = self.keys.find(secret.strip()) if scheme.lower() == "bearer" and secret else None
        except ConfigError as exc:
            log.error("the API keys cannot be read: %s", exc)
            raise Refused(503, "the API keys cannot be read; see the server's log") from None
        if key is None:
            log.warning("http request refused client=%s path=%s: %s", request.remote,
                        logs_safe(request.path), "wrong API key" if secret else "no API key")
            await asyncio.sleep(self.cfg.http.auth_fail_delay)
            raise Refused(401, "a valid API key is needed (Authorization: Bearer <key>)",
                          {"WWW-Authenticate": 'Bearer realm="mailflow"'})
        return key

    def rate(self, key: ApiKey, count: int) -> None:
        wait = self.limiter.take(key.name, count, key.rate)
        if wait is not None:
            raise Refused(429, f"the key {key.name} may queue {key.rate} messages a minute",
                          {"Retry-After": str(max(1, math.ceil(wait)))})

    @staticmethod
    def idempotency_key(request: web.Request) -> str | None:
        value = request.headers.get("Idempotency-Key")
        if value is None:
            return None
        try:
            return idempotency.check_key(value)
        except ValueError as exc:
            raise Refused(400, f"Idempotency-Key: {exc}") from None

    # -- endpoints --------------------------------------------------------------------------

    async def inject(self, request: web.Request) -> web.Response:
        return await self._handle(request, apireq.inject, self._inject_messages, self._inject_answer)

    async def send_raw(self, request: web.Request) -> web.Response:
        return await self._handle(request, apireq.raw, self._raw_messages, self._raw_answer)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(200, openapi.document())

    async def _handle(self, request: web.Request, parse: Any, messages: Any, answer: Any) -> web.Response:
        key = await self.authenticate(request)
        idem = self.idempotency_key(request)
        body = await request.read()
        try:
            parsed = parse(apireq.body_json(body))
        except apireq.BadField as exc:
            raise Refused(400, str(exc)) from None
        name = idempotency.record_name(key.name, idem)
        digest = idempotency.body_digest(body)
        replay = self._replay(name, digest) if idem is not None else None
        if replay is not None:
            return replay
        loop = asyncio.get_running_loop()
        client = f"http:{key.name}"
        conn = Connection(remote_ip=request.remote or "", remote_port=0, local_ip="", local_port=0,
                          relaying=True, tls=request.secure, auth_user=client)
        outgoing, refused = await loop.run_in_executor(None, messages, parsed, key)
        self.rate(key, len(outgoing))
        outcome = await loop.run_in_executor(None, self._queue, conn, outgoing, refused, key, parsed,
                                             name, digest, idem is not None, answer)
        self._expire_now_and_then()
        return json_response(*answer(outcome))

    def _replay(self, name: str, digest: str) -> web.Response | None:
        record = staging.read_record(self.spool, name)
        if record is None:
            return None
        if record.get("body") != digest:
            raise Refused(422, "Idempotency-Key: used before with another request body")
        return json_response(int(record.get("status", 200)), record.get("answer", {}),
                             {"Idempotent-Replayed": "true"})

    # -- what a request asks for ------------------------------------------------------------

    def _tenant(self, key: ApiKey, asked: str | None) -> str | None:
        if asked is not None and key.tenant != ANY_TENANT:
            raise apireq.BadField("tenant", f"the key {key.name} cannot name a tenant "
                                  "(mailflow apikey add --tenant '*' makes one that can)")
        return asked if key.tenant == ANY_TENANT else key.tenant

    def _inject_messages(self, req: apireq.Inject, key: ApiKey) -> tuple[list[Outgoing], Refusals]:
        try:
            self._tenant(key, req.tenant)
            composer = Composer(req.content, req.dialect, req.substitutions)
        except ComposeError as exc:  # BadField too
            raise Refused(400, str(exc)) from None
        out: list[Outgoing] = []
        refused: Refusals = []
        for n, r in enumerate(req.recipients):
            try:
                address = parse_address(r.email)
                data = composer.message(r.email, r.name, r.substitutions)
            except (AddressError, ComposeError) as exc:
                refused.append((n, r.email, str(exc)))
                continue
            out.append(Outgoing(req.envelope_sender, [address], data, r.email, n))
        return out, refused

    def _raw_messages(self, req: apireq.Raw, key: ApiKey) -> tuple[list[Outgoing], Refusals]:
        rcpts: list[Address] = []
        refused: Refusals = []
        for n, text in enumerate(req.rcpt_to):
            try:
                rcpts.append(parse_address(text))
            except AddressError as exc:
                refused.append((n, text, str(exc)))
        return ([Outgoing(req.mail_from, rcpts, req.data, ",".join(req.rcpt_to))] if rcpts else []), refused

    # -- queueing, in a thread ----------------------------------------------------------------

    def _queue(self, conn: Connection, outgoing: list[Outgoing], refused: Refusals,
               key: ApiKey, parsed: Any, name: str, digest: str, keep: bool, answer: Any) -> Outcome:
        outcome = Outcome(failures=list(refused))
        tenant = key.tenant if key.tenant != ANY_TENANT else getattr(parsed, "tenant", None)
        notes = {k: v for k, v in ((TENANT_NOTE, tenant), (CAMPAIGN_NOTE, getattr(parsed, "campaign", None)))
                 if v}
        max_size = self.cfg.smtp.max_message_size
        self.spool.ensure_once()
        try:
            staged = staging.Staged.begin(self.spool, name)
        except staging.InFlight:
            raise Refused(409, "Idempotency-Key: a request with this key is being queued now") from None
        except OSError as exc:
            raise Refused(503, f"the queue cannot be written: {exc.strerror or exc}") from None
        try:
            for item in outgoing:
                rcpts = self._admitted(item, outcome)
                if not rcpts:
                    continue
                if len(item.data) > max_size:
                    outcome.fail(item.index, item.label, f"message too large ({len(item.data)} bytes; "
                               f"the limit is {max_size})")
                    continue
                asked = getattr(parsed, "dsn", None)
                try:
                    mine = notes if asked is None else {**notes, dsnparams.DSN_NOTE: dsnparams.from_api(
                        asked, [r.address for r in rcpts]).to_note()}
                except dsnparams.ParamError as exc:  # an orcpt of this message's recipient
                    outcome.fail(item.index, item.label, f"dsn: {exc}")
                    continue
                if not self._hook_passes(conn, item, rcpts, mine, outcome):
                    continue
                ready = prepare_message(item.mail_from, rcpts, item.data, notes=mine,
                                        received_from=f"api ([{conn.remote_ip}])",
                                        protocol="HTTPS" if conn.tls else "HTTP",
                                        client=conn.auth_user or "http", cfg=self.cfg)
                try:
                    staged.write(ready.entries, ready.data)
                finally:
                    ready.close()
                outcome.queued.append(ready)
            status, said = answer(outcome)
            staged.commit({"status": status, "answer": said, "body": digest}, keep=keep)
        except (QueueError, OSError) as exc:
            staged.abandon()
            log.error("http request not queued (%s): nothing of it is", exc)
            raise Refused(503, f"not queued, try again later: {getattr(exc, 'strerror', None) or exc}",
                          {"Retry-After": "60"}) from None
        except BaseException:
            staged.abandon()
            raise
        for ready in outcome.queued:
            announce(self.cfg, self.spool, ready)
        return outcome

    def _admitted(self, item: Outgoing, outcome: Outcome) -> list[Address]:
        """The message's recipients that are not on the suppression list."""
        store = suppression.for_config(self.cfg)
        kept = []
        for rcpt in item.rcpt_to:
            entry = suppression.check(store, rcpt.address)
            if entry is None:
                kept.append(rcpt)
                continue
            logsmod.event("refused", rcpt=logs_safe(rcpt.address), client="http", reason="suppressed",
                          since=int(entry.since))
            outcome.fail(item.index, rcpt.address, "on the suppression list: not sent")
        return kept

    def _hook_passes(self, conn: Connection, item: Outgoing, rcpts: list[Address],
                     notes: dict[str, Any], outcome: Outcome) -> bool:
        """The ``queue_outbound`` hook, as SMTP runs it: OK takes the message, DENY and
        DENYSOFT refuse it (listed as failed), anything else lets it be queued."""
        body = Body()
        try:
            body.write(item.data)
            txn = Transaction(mail_from=item.mail_from, rcpt_to=rcpts, body=body, notes=dict(notes))
            answer = hooks.decide(hooks.queue_outbound, connection=conn, transaction=txn)
        finally:
            body.close()
        if answer.code is OK:
            outcome.taken += 1
            return False
        if answer.code in (DENY, DENYSOFT):
            outcome.fail(item.index, item.label, str(answer.value or (
                "refused" if answer.code is DENY else "deferred, try again later")))
            return False
        return True

    @staticmethod
    def _inject_answer(outcome: Outcome) -> tuple[int, dict[str, Any]]:
        """Always 200: a recipient that failed is listed, and does not fail the others."""
        return 200, {"success_count": len(outcome.queued) + outcome.taken,
                     "fail_count": len(outcome.failed), "failed_recipients": outcome.failed,
                     "errors": outcome.errors}

    @staticmethod
    def _raw_answer(outcome: Outcome) -> tuple[int, dict[str, Any]]:
        """200 with the message's id, or 400 when no recipient was left to send it to."""
        if not outcome.queued and not outcome.taken:
            return 400, {"error": "rcpt_to: " + "; ".join(outcome.errors or ["no recipient"])}
        answer: dict[str, Any] = {"message_id": outcome.queued[0].txn if outcome.queued else None}
        if outcome.failed:
            answer["failed_recipients"] = outcome.failed
            answer["errors"] = outcome.errors
        return 200, answer

    def _expire_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._expired > EXPIRE_EVERY:
            self._expired = now
            asyncio.get_running_loop().run_in_executor(None, staging.expire, self.spool, idempotency.KEEP)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer is JSON, a refusal included: ``{"error": "..."}``."""
    try:
        return await handler(request)
    except Refused as exc:
        return json_response(exc.status, {"error": exc.error}, exc.headers)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_response(413, {"error": f"body: larger than max_body ({exc.text})"})
    except web.HTTPException as exc:
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_response(exc.status, {"error": exc.reason}, headers)
    except Exception:
        log.exception("http request failed path=%s", logs_safe(request.path))
        return json_response(500, {"error": "internal error; see the server's log"})


def application(cfg: Config) -> web.Application:
    api = Api(cfg)
    app = web.Application(middlewares=[_json_errors], client_max_size=cfg.http.max_body)
    app.router.add_post(INJECT, api.inject)
    app.router.add_post(SEND_RAW, api.send_raw)
    app.router.add_get(OPENAPI, api.openapi)
    return app


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.http.cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cfg.http.cert, cfg.http.key)
    return context


async def start(cfg: Config, announce_line: Any = print, *, reuse_port: bool = False) -> web.AppRunner | None:
    """Serve the API when ``http.ini`` has a ``listen``; announce ``listening on http(s)://…``."""
    if cfg.http.listen is None:
        return None
    host, port = cfg.http.listen
    runner = web.AppRunner(application(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    context = _ssl_context(cfg)
    site = web.TCPSite(runner, host, port, ssl_context=context, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(cfg.directory / "http.ini", None,
                          f"cannot listen on {format_hostport(host, port)}: {exc.strerror or exc}") from None
    scheme = "https" if context else "http"
    for server in runner.sites:
        for sock in getattr(getattr(server, "_server", None), "sockets", None) or ():
            addr = sock.getsockname()
            announce_line(f"listening on {scheme}://{format_hostport(addr[0], addr[1])}")
    return runner

