"""Crash recovery: re-send the message of every job whose next action is overdue.

A SIGKILLed worker takes its messages with it: with the Redis broker they sit unacknowledged until the
visibility timeout (an hour). The job store knows better: every non-terminal job has a `next_action` and a
`due_at` (a lease while an action runs), indexed in `genq:due`. Jobs overdue by more than
`GENQ_SWEEP_GRACE_S` get a fresh message carrying their *current* attempt; if the original message is still
alive after all, whichever comes second finds the attempt moved on and does nothing. Runs every few seconds
from beat (`genq.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable

from workers import keys
from workers.admission import admit
from workers.job import Action
from workers.runtime import Runtime
from workers.steps import Next, log

#: After a re-send, the next look at the same job waits this long (the message may just be queued).
RESEND_AFTER_S = 30.0


def sweep(rt: Runtime, send: Callable[[Next | None], None], *, limit: int = 1000) -> int:
    """Re-send overdue jobs' messages; returns how many were re-sent."""
    now = rt.clock()
    resent = 0
    for ref, _ in rt.store.due(now - rt.settings.sweep_grace_s, limit=limit):
        job = rt.store.get(ref)
        if job is None or job.terminal or job.next_action is Action.NONE:
            rt.store.redis.zrem(keys.DUE, ref)
            continue
        if job.next_action is Action.ADMIT:
            step = admit(rt.store, rt.settings, ref, now=now)
        else:
            step = Next(job.next_action, ref, job.attempt, 0.0)
        # Only push the due time forward if nobody moved the job meanwhile (GT: never pull it back).
        rt.store.redis.zadd(keys.DUE, {ref: now + RESEND_AFTER_S}, xx=True, gt=True)
        send(step)
        resent += 1
        log.warning(
            "overdue job re-sent",
            ref=ref,
            action=job.next_action.value,
            attempt=job.attempt,
            overdue_s=round(now - job.due_at, 1),
        )
    return resent
