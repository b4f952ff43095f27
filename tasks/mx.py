"""``mailflow.lookup_mx``: the send_email and get_mx hooks, then DNS, once per batch."""

from __future__ import annotations

import logging
from typing import Any

from mailflow import app, config, hooks
from mailflow.batch import BROKER_RETRY_MS, accepted, give_back, holding, load, mx_to_json, shown
from mailflow.codes import DELAY, DENY, DENYSOFT, OK
from mailflow.delivery import Attempt, crashed, delay_entry, fail_all, guarded
from mailflow.errors import DeliveryError, Reply, local_reply
from mailflow.hmail import HMail
from mailflow.mx import MX, mx_from_hook
from mailflow.mx import lookup_mx as dns_lookup_mx
from mailflow.spool import Spool, now_ms

log = logging.getLogger(__name__)

#: How long a DELAY from the send_email hook waits when it names no time.
DEFAULT_DELAY = 60.0


@app.task(name="mailflow.lookup_mx", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def lookup_mx(batch: dict[str, Any]) -> None:
    """Find where the batch goes; hand each group of entries with the same MX list on."""
    if accepted(batch, "mailflow.lookup_mx") is None:
        return
    spool = Spool(config.current().queue_path())
    with holding(spool, batch) as held:
        if held:
            groups = _lookup(spool, batch)
            _hand_on(spool, batch, groups)
    spool.finish(batch["claim"])


class _Lookup:
    """The batch's DNS answer, asked at most once and only if some entry needs it."""

    def __init__(self, domain: str):
        self.domain = domain
        self.answer: list[MX] | DeliveryError | None = None

    def mx(self) -> list[MX]:
        if self.answer is None:
            try:
                self.answer = dns_lookup_mx(self.domain, config.current().outbound)
            except DeliveryError as exc:
                self.answer = exc
        if isinstance(self.answer, DeliveryError):
            raise self.answer
        return self.answer


def _lookup(spool: Spool, batch: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Every entry either routed into a group (by MX list and source) or given its outcome."""
    out = config.current().outbound
    dns = _Lookup(batch["domain"])
    groups: dict[tuple, dict[str, Any]] = {}
    for hmail in load(spool, batch):
        with guarded(spool, hmail, out):
            routed = _route(spool, hmail, dns)
            if routed is not None:
                mxs, source = routed
                key = (tuple(mxs), source["bind"], source["helo"])
                group = groups.setdefault(key, {"mx": mxs, "names": [], **source})
                group["names"].append(hmail.filename)
    return groups


def _route(spool: Spool, hmail: HMail, dns: _Lookup) -> tuple[list[MX], dict[str, Any]] | None:
    out = config.current().outbound
    answer = hooks.decide(hooks.send_email, hmail=hmail)
    if answer.code is DELAY:
        delay_entry(spool, hmail, _seconds(answer.value))
        return None
    answer = hooks.decide(hooks.get_mx, hmail=hmail, domain=dns.domain)
    if answer.code is DENY:
        fail_all(spool, hmail, Reply(550, f"5.1.2 {answer.value or 'get_mx refused delivery'}"),
                 Attempt(), out)
        return None
    if answer.code is DENYSOFT:
        fail_all(spool, hmail, Reply(451, f"4.1.2 {answer.value or 'get_mx deferred delivery'}"),
                 Attempt(), out)
        return None
    try:
        mxs = mx_from_hook(answer.value, out.mx_port) if answer.code is OK else dns.mx()
    except DeliveryError as exc:
        fail_all(spool, hmail, exc.reply, Attempt(), out)
        return None
    except ValueError as exc:
        fail_all(spool, hmail, local_reply("4.3.5", f"bad get_mx answer: {exc}"), Attempt(), out)
        return None
    notes = hmail.todo.notes
    return mxs, {"bind": notes.get("outbound_ip"), "helo": notes.get("outbound_helo")}


def _seconds(value: Any) -> float:
    """A hook's DELAY value as seconds; anything unusable means the default, with a log line."""
    if value is None:
        return DEFAULT_DELAY
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < 10 * 365 * 86400:
        log.error("send_email hook answered DELAY with %r, not seconds: waiting %d s", value,
                  DEFAULT_DELAY)
        return DEFAULT_DELAY
    return seconds


def _hand_on(spool: Spool, batch: dict[str, Any], groups: dict[tuple, dict[str, Any]]) -> None:
    cfg = config.current()
    for group in groups.values():
        try:
            payload = {"domain": batch["domain"], "claim": batch["claim"], "names": group["names"],
                       "mx": [mx_to_json(m, cfg.directory) for m in group["mx"]],
                       "bind": group["bind"], "helo": group["helo"]}
        except Exception as exc:  # e.g. no key to seal get_mx credentials with
            for hmail in load(spool, batch, group["names"]):
                crashed(spool, hmail, exc, cfg.outbound)
            continue
        try:
            app.send_task("mailflow.acquire_connection", args=[payload], argsrepr=shown(payload))
        except Exception:  # the broker is unreachable: the queue manager claims them again
            log.exception("could not hand %d entries for %s on; due again shortly",
                          len(group["names"]), batch["domain"])
            give_back(spool, load(spool, batch, group["names"]), now_ms() + BROKER_RETRY_MS)
