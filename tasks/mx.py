"""``mailflow.lookup_mx``: the send_email and get_mx hooks, then DNS, once per batch."""

from __future__ import annotations

import logging
from typing import Any

from mailflow import app, config, hooks
from mailflow.batch import holding, load, mx_to_json, shown
from mailflow.codes import DELAY, DENY, DENYSOFT, OK
from mailflow.delivery import Attempt, delay_entry, fail_all
from mailflow.errors import DeliveryError, Reply, local_reply
from mailflow.mx import MX, mx_from_hook
from mailflow.mx import lookup_mx as dns_lookup_mx
from mailflow.spool import Spool

log = logging.getLogger(__name__)


@app.task(name="mailflow.lookup_mx", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def lookup_mx(batch: dict[str, Any]) -> None:
    """Find where the batch goes; hand each group of entries with the same MX list on."""
    spool = Spool(config.current().queue_path())
    with holding(spool, batch) as held:
        if held:
            _lookup(spool, batch)
    spool.finish(batch["claim"])


def _lookup(spool: Spool, batch: dict[str, Any]) -> None:
    from tasks.connect import acquire_connection

    out = config.current().outbound
    domain = batch["domain"]
    dns_answer: list[MX] | DeliveryError | None = None
    groups: dict[tuple, tuple[list[MX], list[str], dict[str, Any]]] = {}
    for hmail in load(spool, batch):
        answer = hooks.decide(hooks.send_email, hmail=hmail)
        if answer.code is DELAY:
            delay_entry(spool, hmail, float(answer.value or 60))
            continue
        answer = hooks.decide(hooks.get_mx, hmail=hmail, domain=domain)
        if answer.code is DENY:
            fail_all(spool, hmail, Reply(550, f"5.1.2 {answer.value or 'get_mx refused delivery'}"),
                     Attempt(), out)
            continue
        if answer.code is DENYSOFT:
            fail_all(spool, hmail, Reply(451, f"4.1.2 {answer.value or 'get_mx deferred delivery'}"),
                     Attempt(), out)
            continue
        try:
            if answer.code is OK:
                mxs = mx_from_hook(answer.value, out.mx_port)
            else:
                if dns_answer is None:
                    try:
                        dns_answer = dns_lookup_mx(domain, out)
                    except DeliveryError as exc:
                        dns_answer = exc
                if isinstance(dns_answer, DeliveryError):
                    raise dns_answer
                mxs = dns_answer
        except DeliveryError as exc:
            fail_all(spool, hmail, exc.reply, Attempt(), out)
            continue
        except ValueError as exc:
            fail_all(spool, hmail, local_reply("4.3.5", f"bad get_mx answer: {exc}"), Attempt(), out)
            continue
        notes = hmail.todo.notes
        source = {"bind": notes.get("outbound_ip"), "helo": notes.get("outbound_helo")}
        key = (tuple(mxs), source["bind"], source["helo"])
        groups.setdefault(key, (mxs, [], source))[1].append(hmail.filename)
    for mxs, names, source in groups.values():
        group = {"domain": domain, "claim": batch["claim"], "names": names,
                 "mx": [mx_to_json(m) for m in mxs], **source}
        # the MX list may hold get_mx credentials: Flower and events show only the ids
        acquire_connection.apply_async(args=[group], argsrepr=shown(group))
