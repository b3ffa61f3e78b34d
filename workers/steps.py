"""What every stage shares: the next step as a value, backoff, claiming a job, and ending one.

A stage (`submit`, `poll`, `finalize`) is a plain function `(runtime, ref, attempt) -> Next | None`.
It first *claims* the job (the attempt in its message must still be current; claiming advances it and
sets a lease-like due time so the recovery sweep finds the job if this process dies), does its I/O,
records the outcome, and returns the message to send next, if any. Celery only carries these values.
"""

from __future__ import annotations

import random
from typing import Any

import structlog

from workers import admission, metrics
from workers.events import job_event
from workers.job import Action, Job, Next, Status
from workers.runtime import Runtime

log = structlog.get_logger("genq.job")


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


def claim(
    rt: Runtime,
    job: Job,
    action: Action,
    *,
    lease_s: float,
    fields: dict[str, Any] | None = None,
    status: Status | None = None,
) -> int | None:
    """Take the job for this action. Returns the new attempt, or None when another delivery won."""
    now = rt.clock()
    applied = rt.store.transition(
        job.ref,
        status or job.status,
        expected_attempt=job.attempt,
        bump_attempt=True,
        next_action=action,
        due_at=now + lease_s,
        fields=fields,
        now=now,
    )
    if not applied.ok:
        log.info("claim lost", ref=job.ref, action=action.value, reason=applied.reason)
        return None
    return applied.attempt


def reschedule(
    rt: Runtime,
    job: Job,
    attempt: int,
    status: Status,
    action: Action,
    delay_s: float,
    fields: dict[str, Any] | None = None,
) -> Next | None:
    """Record that `action` is due in `delay_s`, then return the message that will carry it."""
    now = rt.clock()
    applied = rt.store.transition(
        job.ref, status, expected_attempt=attempt, next_action=action, due_at=now + delay_s, fields=fields, now=now
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
    attempt: int,
    status: Status,
    *,
    code: str | None = None,
    message: str | None = None,
    fields: dict[str, Any] | None = None,
    objects: list[dict[str, Any]] | None = None,
    manifest_key: str | None = None,
) -> None:
    """Move the job to a terminal status and emit its event, in one atomic step; then give back its slot (if it
    still held one) and admit the next job into it."""
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
            metrics.POLLS_PER_JOB.observe(job.poll_count)
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
        admission.release(rt.store, rt.quota, rt.settings, job, rt.send)
    else:
        log.warning("terminal transition refused", ref=job.ref, target=status.value, reason=applied.reason)
