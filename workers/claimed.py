"""What every stage shares: a claimed job as a value (`Claimed`), backoff, and ending a job.

A stage (`submit`, `poll`, `finalize`) is a plain function `(runtime, ref, attempt) -> Next | None`.
It first *claims* the job (the attempt in its message must still be current; claiming advances it and
sets a lease-like due time so the recovery sweep finds the job if this process dies), does its I/O,
records the outcome through the `Claimed` it got, and returns the message to send next, if any. Celery only
carries these values.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from workers import admission, metrics
from workers.billing import Bill
from workers.events import job_event
from workers.job import Action, Job, Next, Status
from workers.runtime import Runtime

log = structlog.get_logger("genq.job")


#: Unexpected exceptions a job's stages may raise before it ends `failed` with `InternalError`. Each one is
#: retried by the recovery sweep (the job's due time passes), so a passing fault costs a few seconds; a
#: lasting one (a bug of ours, an answer nobody foresaw) ends the job instead of looping forever. A job with
#: paid work alive (a task that may run, results whose URLs live) is tried until that is over (24 h at most),
#: then ended: a crash is never a reason to throw away what was billed.
STAGE_MAX_CRASHES = 3

Stage = Callable[[Runtime, str, int], Next | None]


def run_stage(stage: Stage, rt: Runtime, ref: str, attempt: int) -> Next | None:
    """Run one stage of a job. An exception nobody foresaw is counted on the job and raised again (the sweep
    sends the step again); at `STAGE_MAX_CRASHES` the job ends `failed`, code `InternalError`, with the
    exception's type and message (the traceback goes to the log, not into the event). Redis being away is not
    the job's fault and is not counted."""
    try:
        return stage(rt, ref, attempt)
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except Exception as exc:
        crashes = rt.store.count_crash(ref)
        log.exception("stage crashed", ref=ref, stage=getattr(stage, "__name__", "?"), crashes=crashes)
        job = rt.store.get(ref)
        if crashes < STAGE_MAX_CRASHES or job is None or job.terminal or _paid_work_alive(rt, job):
            raise
        message = f"{type(exc).__name__}: {str(exc)[:500]} (after {crashes} crashes of its stages)"
        end(rt, job, None, Status.FAILED, code="InternalError", message=message)
        return None


def _paid_work_alive(rt: Runtime, job: Job) -> bool:
    """Whether ending the job now could throw away something billed: results downloading while their URLs live
    (24 h), or a task that may still run (its last answer not final, or its create's outcome unknown, within
    the service's 24 h). Such a job keeps being tried, at the sweep's pace, until that time is over; then the
    crash cap applies."""
    now = rt.clock()
    if job.status is Status.DOWNLOADING:
        return now < (job.results_at or 0) + rt.settings.result_url_life_s
    return job.task_may_run(now) is not None


def backoff_s(failures: int, *, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter above half: never zero, never over the cap."""
    ceiling = min(cap_s, base_s * (2 ** max(0, failures - 1)))
    return rng.uniform(ceiling / 2, ceiling)


def load_current(rt: Runtime, ref: str, attempt: int, action: Action) -> Job | None:
    """The job, if this message is still the one it waits for; None (and a log line) otherwise."""
    job = rt.store.get(ref)
    if job is None:
        log.warning("message for unknown job dropped", ref=ref, action=action.value)
        return None
    if job.next_action is not action or job.attempt != attempt:
        log.debug(
            "stale message dropped",
            ref=ref,
            action=action.value,
            attempt=attempt,
            current_attempt=job.attempt,
            next_action=job.next_action.value,
        )
        return None
    if job.task_id:
        structlog.contextvars.bind_contextvars(task_id=job.task_id)
    return job


@dataclass(frozen=True)
class Claimed:
    """A job this delivery has claimed: every record it makes is a compare-and-set on `attempt`, so a second
    delivery of the same message, or a cancel in between, finds the job moved on instead of being overwritten."""

    rt: Runtime
    job: Job  # the job as read before the claim (its counters are what the claim's records build on)
    attempt: int
    status: Status  # the status the claim holds it in

    @property
    def now(self) -> float:
        """The runtime's clock, read now (after any I/O the stage did since its claim)."""
        return self.rt.clock()

    def again(
        self,
        status: Status,
        action: Action,
        delay_s: float,
        *,
        fields: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        bill: Bill | None = None,
    ) -> Next | None:
        """Record that `action` is due in `delay_s` (in `status`), then return the message that carries it.
        `event` is appended, and `bill` counted, in the same atomic step (the event if the status changes)."""
        return reschedule(
            self.rt, self.job, self.attempt, status, action, delay_s, fields=fields, event=event, bill=bill
        )

    def stay(self, action: Action, delay_s: float, *, fields: Mapping[str, Any] | None = None) -> Next | None:
        """`again` in the status the claim holds the job in."""
        return self.again(self.status, action, delay_s, fields=fields)

    def end(
        self,
        status: Status,
        *,
        code: str | None = None,
        message: str | None = None,
        fields: Mapping[str, Any] | None = None,
        objects: list[dict[str, Any]] | None = None,
        manifest_key: str | None = None,
    ) -> None:
        """End the job in `status` (see `end`)."""
        end(
            self.rt,
            self.job,
            self.attempt,
            status,
            code=code,
            message=message,
            fields=fields,
            objects=objects,
            manifest_key=manifest_key,
        )

    def claim_again(
        self, status: Status, action: Action, *, lease_s: float, fields: Mapping[str, Any]
    ) -> Claimed | None:
        """Claim once more, before a step that others must see as begun (a create about to be sent)."""
        return claim(self.rt, self.job, action, lease_s=lease_s, fields=fields, status=status, attempt=self.attempt)


def claim(
    rt: Runtime,
    job: Job,
    action: Action,
    *,
    lease_s: float,
    fields: Mapping[str, Any] | None = None,
    status: Status | None = None,
    attempt: int | None = None,
) -> Claimed | None:
    """Take the job for this action (the job as read, or as claimed at `attempt`); None when another delivery
    won. Due again at the end of the lease, so the recovery sweep re-sends it if this process dies."""
    now, held = rt.clock(), status or job.status
    applied = rt.store.claim(
        job.ref,
        held,
        expected_attempt=job.attempt if attempt is None else attempt,
        action=action,
        lease_until=now + lease_s,
        fields=fields,
        now=now,
    )
    if not applied.ok:
        log.info("claim lost", ref=job.ref, action=action.value, reason=applied.reason)
        return None
    return Claimed(rt, job, applied.attempt, held)


def reschedule(
    rt: Runtime,
    job: Job,
    attempt: int,
    status: Status,
    action: Action,
    delay_s: float,
    fields: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
    bill: Bill | None = None,
) -> Next | None:
    """Record that `action` is due in `delay_s`, then return the message that will carry it. `event` is
    appended, and `bill` counted, in the same atomic step (the event if the status changes)."""
    now = rt.clock()
    applied = rt.store.transition(
        job.ref,
        status,
        expected_attempt=attempt,
        next_action=action,
        due_at=now + delay_s,
        fields=fields,
        event=event,
        now=now,
        bill=bill,
    )
    if not applied.ok:
        log.warning("reschedule refused", ref=job.ref, action=action.value, reason=applied.reason)
        return None
    if status != job.status:
        log.info(
            "job status changed",
            ref=job.ref,
            old=job.status.value,
            new=status.value,
            task_id=(fields or {}).get("task_id", job.task_id),
        )
    return Next(action, job.ref, attempt, delay_s)


def end(
    rt: Runtime,
    job: Job,
    attempt: int | None,
    status: Status,
    *,
    code: str | None = None,
    message: str | None = None,
    fields: Mapping[str, Any] | None = None,
    objects: list[dict[str, Any]] | None = None,
    manifest_key: str | None = None,
) -> None:
    """Move the job to a terminal status and emit its event, in one atomic step (a compare-and-set on
    `attempt`; None: whatever it is); then give back its slot (if it still held one) and admit the next job."""
    now = rt.clock()
    all_fields = dict(fields or {})
    if code:
        all_fields.update(error_code=code, error_message=message or "")
    event = job_event(
        job, status, now=now, error_code=code, error_message=message, objects=objects, manifest_key=manifest_key
    )
    applied = rt.store.transition(job.ref, status, expected_attempt=attempt, fields=all_fields, event=event, now=now)
    if applied.ok:
        if job.task_id or job.poll_count:
            metrics.POLLS_PER_JOB.labels(account=job.account or "", model=job.request.model).observe(job.poll_count)
        log.info(
            "job status changed",
            ref=job.ref,
            old=job.status.value,
            new=status.value,
            task_id=job.task_id,
            error_code=code,
        )
        if applied.batch_finished:
            log.info("batch finished", batch_id=job.batch_id)
        admission.settle_spend(rt.store, rt.quota, rt.settings, job, rt.send, status=status, code=code)
        admission.release(rt.store, rt.quota, rt.settings, job, rt.send)
    else:
        log.warning("terminal transition refused", ref=job.ref, target=status.value, reason=applied.reason)
