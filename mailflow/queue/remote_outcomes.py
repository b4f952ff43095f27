"""Outcomes reported by a holder on another host, applied on the owner (``mailflow.record_outcomes``).

An outcome whose entry is still in its claim is recorded as if the attempt had
been made here: the hooks (``delivered``, ``deferred``…) run on the owner.  One
that comes after the claim expired is applied only while that is still safe --
the entry waits in pending/, not yet attempted again: it is claimed afresh and
the outcome recorded, so a delivered entry is not sent a second time.  When the
entry is being attempted again, or is gone, a delivery reported now may have
been a duplicate: it is logged as one and nothing is changed.
"""

from __future__ import annotations

import logging

from mailflow.config.settings import Outbound
from mailflow.errors import NothingToDo
from mailflow.queue import lending
from mailflow.queue.claims import give_back, load
from mailflow.queue.entry import EntryName
from mailflow.queue.outcomes import guarded, record
from mailflow.queue.spool import PENDING, Spool, now_ms
from mailflow.wire.payloads import Batch, Outcome, RemoteOutcomes

log = logging.getLogger(__name__)


def apply(spool: Spool, report: RemoteOutcomes, settings: Outbound) -> None:
    """Record each outcome, give back what was not attempted, and end the claim once empty.

    Only a claim this queue lent, and only entries it lent under that claim, whether the
    claim is still out or came back (late outcomes): the MAC says who published the
    report, this says that it is about mail we gave them (NothingToDo otherwise)."""
    batch = report.batch
    refusal = _refusal(spool, report)
    if refusal is not None:
        log.warning("refused a report from %s for claim %s: %s; nothing was done", report.holder,
                    batch.claim, refusal)
        raise NothingToDo(f"refused: {refusal}")
    for name, outcome in report.results.items():
        found = load(spool, batch, [name])
        if not found:
            _late(spool, report, name, outcome, settings)
            continue
        with guarded(spool, found[0], settings, outcome):
            record(spool, found[0], outcome, settings, via=report.holder)
    if report.back:
        give_back(spool, load(spool, batch, report.back), max(now_ms(), report.back_due_ms),
                  report.back_why)
    # reports of one claim may be applied in any order (several worker threads):
    # whichever leaves it empty ends it
    spool.finish(batch.claim)
    lending.returned(spool, batch.claim)


def _refusal(spool: Spool, report: RemoteOutcomes) -> str | None:
    lent = lending.lent_names(spool, report.batch.claim)
    if lent is None:
        return "this queue lent no such claim"
    named = set(report.batch.names) | set(report.results) | set(report.back)
    if not named <= lent:
        return f"it names {len(named - lent)} entries that were not lent under it"
    return None


def _late(spool: Spool, report: RemoteOutcomes, name: str, outcome: Outcome, settings: Outbound) -> None:
    """The claim no longer has the entry: apply the outcome if it waits untouched in pending/."""
    parsed = EntryName.parse(name)
    assert parsed is not None  # RemoteOutcomes.from_json checked every name
    waiting = [n for n in spool.names(PENDING) if n.id == parsed.id]
    if waiting:
        claim, got = spool.claim(waiting[:1])
        for hmail in load(spool, Batch(spool.identity, claim, tuple(got))):
            with guarded(spool, hmail, settings, outcome):
                record(spool, hmail, outcome, settings, via=report.holder)
        spool.finish(claim)
        if got:
            log.warning("outcome of %s from %s came after its claim %s expired; it had not been "
                        "attempted again, so it was applied", parsed.id, report.holder,
                        report.batch.claim)
            return
    if any(200 <= reply.code < 300 for reply in outcome.results.values()):
        log.warning("possible duplicate: %s was delivered by %s (%s) after its claim %s expired, "
                    "and the entry has been attempted again since", parsed.id, report.holder,
                    outcome.host, report.batch.claim)
    else:
        log.info("outcome of %s from %s came after its claim %s expired and the entry was "
                 "attempted again: not applied", parsed.id, report.holder, report.batch.claim)

