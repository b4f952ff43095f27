"""The remote-control commands mailflow adds to its workers (``app.control.broadcast``).

Each acts only on a broadcast that carries mailflow's MAC and is fresh (the broker is
outside the trust boundary: a forged renewal could keep a dead holder's claims from ever
coming back, a forged flush could be sent at will).
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

from mailflow.queue import lending
from mailflow.queue import tools as queuetools
from mailflow.queue.flush import flush
from mailflow.relay.fence import HOLDINGS
from mailflow.runtime import authentic
from mailflow.runtime.steps import local_spool


@control_command(args=[("node", str), ("worker_host", bool), ("claims", dict)],
                 signature="node worker_host claims")
def mailflow_renew(state: Any, node: str = "", worker_host: bool = False,
                   claims: dict[str, list[str]] | None = None, **signed: Any) -> dict[str, Any]:
    """A worker's periodic broadcast: renew the claims it holds of this host's queue; note a
    worker host; and, when it is this worker's own, that this host hears the broker."""
    if not authentic.broadcast_accepted("mailflow_renew", {
            "node": node, "worker_host": worker_host, "claims": claims, **signed}):
        return {"error": "refused"}
    if worker_host and node:
        HOLDINGS.seen(node)
    spool = local_spool()
    if spool is None:
        return {"ok": {}}
    mine = (claims or {}).get(spool.identity) if isinstance(claims, dict) else None
    renewed = lending.renew(spool, [c for c in mine if isinstance(c, str)]) if isinstance(mine, list) else 0
    if node and node == state.hostname:
        lending.heard(spool, node)
    return {"ok": {"renewed": renewed}}


@control_command(args=[("domain", str), ("owner", str)], signature="[domain] [owner]")
def mailflow_flush(state: Any, domain: str | None = None, owner: str | None = None,
                   **signed: Any) -> dict[str, Any]:
    """Flush this host's queue (or nothing, if it has none or is not ``owner``)
    (``mailflow.flush_queue`` signs the broadcast)."""
    if not authentic.broadcast_accepted("mailflow_flush", {"domain": domain, "owner": owner, **signed}):
        return {"error": "refused"}
    spool = local_spool()
    if spool is None or (owner and owner != spool.identity):
        return {"ok": {}}
    return {"ok": {"owner": spool.identity, "flushed": flush(spool, domain or None)}}


@inspect_command()
def mailflow_stats(state: Any) -> dict[str, Any]:
    """This host's queue statistics, by its identity (``mailflow queue stats --cluster``)."""
    spool = local_spool()
    return {"owner": spool.identity, "stats": queuetools.stats(spool)} if spool else {}
