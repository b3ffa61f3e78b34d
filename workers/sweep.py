"""The periodic sweep: re-send overdue messages, give back slots nobody needs, and admit waiting jobs.

A SIGKILLed worker takes its messages with it: with the Redis broker they sit unacknowledged until the
visibility timeout (an hour). The job store knows better: every admitted, non-terminal job has a
`next_action` and a `due_at` (a lease while an action runs), indexed in `genq:due`. Jobs overdue by more than
`GENQ_SWEEP_GRACE_S` get a fresh message carrying their *current* attempt; if the original message is still
alive after all, whichever comes second finds the attempt moved on and does nothing.

Slots: a slot is given back the moment its job's task ends, in the stage that sees it. A worker that dies
between the two leaves the slot held by a job that no longer needs it; the audit here gives it back (a job
that ended, is downloading, or moved to another account's slot). Then every model with jobs waiting is
dispatched, so a slot freed by the audit, or by a lease that lapsed, is used at once. Last, every account with
tasks in flight gets a task-list watcher if its own has died (`workers/watch.py`). Runs every few seconds from
beat (`genq.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.admission import HOLDS_SLOT, dispatch_all, scope_of
from workers.claimed import log
from workers.job import Action, Next, Status
from workers.quota.quota import Scope
from workers.quota.spend import batch_ledger
from workers.runtime import Runtime
from workers.watch import keep_watching

#: After a re-send, the next look at the same job waits this long (the message may just be queued; if it was
#: lost too, with a worker killed before it ran, this is how long the job waits for another).
RESEND_AFTER_S = 15.0


@dataclass
class SweepReport:
    resent: int = 0
    slots_freed: int = 0
    unheld: int = 0
    admitted: int = 0


#: Held jobs the sweep puts back in line per batch and round, when its ledger has room (those that still do not
#: fit are held again): what a job ending, or a cap changed, put back is the fast way; this is the safety net.
SWEEP_UNHOLD = 10


def unhold_with_room(rt: Runtime) -> int:
    """Put back in line some held jobs of each batch whose budget has room: a job that ended while another was
    being held (its room freed before the hold landed), or a price added for a money cap, is not left waiting
    for ever."""
    unheld = 0
    for batch_id in rt.store.held_batches():
        ledger = rt.quota.spend.read(batch_ledger(batch_id))
        room_u = ledger.cap.units is None or ledger.committed_units < ledger.cap.units
        room_m = ledger.cap.money is None or ledger.committed_money < ledger.cap.money
        # An unhold that finds the held set empty also takes the batch out of the index.
        if (room_u and room_m) or not rt.store.held(batch_id):
            unheld += rt.store.unhold(batch_id, limit=SWEEP_UNHOLD)
    return unheld


def sweep(rt: Runtime, send: Callable[[Next | None], None], *, limit: int = 1000) -> SweepReport:
    report = SweepReport(resent=resend_overdue(rt, send, limit=limit))
    report.slots_freed = audit_slots(rt)
    report.unheld = unhold_with_room(rt)
    report.admitted = dispatch_all(rt.store, rt.quota, rt.settings, send, now=rt.clock())
    keep_watching(rt, rt.clock())
    return report


def resend_overdue(rt: Runtime, send: Callable[[Next | None], None], *, limit: int = 1000) -> int:
    """Re-send overdue jobs' messages; returns how many were re-sent."""
    now = rt.clock()
    resent = 0
    for ref, _ in rt.store.due(now - rt.settings.sweep_grace_s, limit=limit):
        job = rt.store.get(ref)
        if job is None or job.terminal or job.next_action is Action.NONE:
            rt.store.drop_due(ref)
            continue
        if job.next_action is Action.ADMIT:
            # A revived job waits in its model's queue, not in the due index.
            rt.store.requeue(ref, job.request.model)
            rt.store.drop_due(ref)
            continue
        # Only pushed later, and only while the job is still indexed: nobody moved it meanwhile.
        rt.store.push_due(ref, now + RESEND_AFTER_S)
        send(Next(job.next_action, ref, job.attempt, 0.0))
        resent += 1
        log.warning(
            "overdue job re-sent",
            ref=ref,
            action=job.next_action.value,
            attempt=job.attempt,
            overdue_s=round(now - job.due_at, 1),
        )
    return resent


def audit_slots(rt: Runtime) -> int:
    """Give back every slot whose job no longer needs it; returns how many."""
    now, freed = rt.clock(), 0
    for account in rt.settings.resolved_accounts():
        for model in rt.settings.catalogue:
            scope = Scope(account.name, model)
            for ref in rt.quota.slot_holders(scope, now):
                job = rt.store.get(ref)
                if job is not None and job.status in HOLDS_SLOT and scope_of(job) == scope:
                    continue
                if job is not None and job.status is Status.ACCEPTED:
                    continue  # a dispatcher is admitting it right now (or died doing so: it will again)
                if rt.quota.release_slot(scope, ref):
                    freed += 1
                    log.warning("slot given back by the audit", scope=str(scope), ref=ref)
    return freed
