"""Admission: accepted jobs wait in their model's queue in Redis; a slot frees, the next job goes to `submit`.

A job is created `accepted` in `genq:wait:{model}` (not as a Celery message, so 100,000 waiting prompts cost
Redis memory, not a worker's). `dispatch` fills every free slot of every account serving the model: it looks
at the job first in line, takes a slot of the account for it (`workers/quota/slots.py`), moves it to
`admitted` by compare-and-set (its deadline starts now) and only then takes it out of the queue. Each step
is safe to repeat, so a dispatcher that dies half-way, or two that race for one job, leave no job lost and no
slot double-booked: the loser of the compare-and-set gives back the slot it took, and the recovery sweep's
slot audit gives back any slot whose job no longer needs it.

Who calls `dispatch`: the producer when a batch arrives, the stage that frees a slot (a poll that sees the
task end, any job that ends), and the periodic sweep.

Order: a batch's priority (0-9) is a band, and a band is served before every lower one; within a band,
batches take turns (the queue's score, see `workers/jobstore/lua/create_job.lua`), so a ten-row interactive batch is not
stuck behind a 100,000-row nightly one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from config.accounts import AccountSettings
from config.catalogue import Kind
from config.settings import Settings
from workers import account_pause
from workers.job import Action, Job, Next, Status
from workers.jobstore import JobStore
from workers.quota.quota import Quota, Scope

log = structlog.get_logger("genq.admission")

Send = Callable[[Next | None], None]

#: Statuses in which a job needs its slot: its task is (or is about to be) upstream.
HOLDS_SLOT = frozenset({Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})


def deadline_s(settings: Settings, model: str) -> float:
    kind = settings.spec(model).kind
    return settings.video_deadline_s if kind is Kind.VIDEO else settings.image_deadline_s


def scope_of(job: Job) -> Scope | None:
    """The scope whose slot the job holds (None before admission)."""
    return Scope(job.account, job.request.model) if job.account else None


def admit(store: JobStore, settings: Settings, ref: str, account: str, *, now: float | None = None) -> Next | None:
    """Move an `accepted` job to `admitted` under `account`: its deadline starts now and its submit is due now.
    Returns the submit message; None when the job was no longer waiting."""
    now = time.time() if now is None else now
    job = store.get(ref)
    if job is None or job.status is not Status.ACCEPTED:
        return None
    applied = store.transition(
        ref,
        Status.ADMITTED,
        expected_attempt=job.attempt,
        next_action=Action.SUBMIT,
        due_at=now,
        fields={"deadline_at": now + deadline_s(settings, job.request.model), "account": account},
        now=now,
    )
    return Next(Action.SUBMIT, ref, applied.attempt) if applied.ok else None


def serving(settings: Settings, model: str) -> list[AccountSettings]:
    return [a for a in settings.resolved_accounts() if a.serves(model)]


def dispatch(
    store: JobStore, quota: Quota, settings: Settings, model: str, send: Send, *, now: float | None = None
) -> int:
    """Admit waiting jobs of `model` into every free slot of every account serving it; returns how many. A model
    this process's config does not know is left to the processes that do (their limits are not known here)."""
    now = time.time() if now is None else now
    if model not in settings.catalogue:
        log.warning("jobs of a model this process does not know are left waiting", model=model)
        return 0
    admitted = 0
    paused = account_pause.all_paused(store)
    for account in serving(settings, model):
        if account.name in paused:
            continue
        scope = Scope(account.name, model)
        limit = quota.slot_limit(scope, settings.limits(account.name, model).slot_limit, settings.slot_probe_s, now)
        while (first := store.next_waiting(model)) is not None:
            ref, score = first
            if not quota.take_slot(scope, ref, limit=limit, lease_s=settings.slot_lease_s, now=now):
                break  # this account is full; the next one may have room
            step = admit(store, settings, ref, account.name, now=now)
            if step is None:
                if not _settle_lost_race(store, quota, scope, ref):
                    break
                continue
            store.leave_queue(model, ref)
            store.advance_clock(model, score)
            send(step)
            admitted += 1
    if admitted:
        log.debug("admitted", model=model, jobs=admitted)
    return admitted


def _settle_lost_race(store: JobStore, quota: Quota, scope: Scope, ref: str) -> bool:
    """`ref` could not be admitted (it ended, or a racing dispatcher admitted it first). Keep the slot only if
    the job now holds it; take the job out of the queue unless it is still waiting. False when it still is
    (the caller stops rather than look at it again)."""
    job = store.get(ref)
    if not (job is not None and job.status in HOLDS_SLOT and job.account == scope.account):
        quota.release_slot(scope, ref)
    if job is not None and job.status is Status.ACCEPTED:
        return False
    store.leave_queue(scope.model, ref)
    return True


def dispatch_all(store: JobStore, quota: Quota, settings: Settings, send: Send, *, now: float | None = None) -> int:
    """`dispatch` every model that has jobs waiting (the producer after a batch, and the periodic sweep)."""
    waiting = store.waiting(settings.catalogue.names())
    return sum(dispatch(store, quota, settings, model, send, now=now) for model in waiting)


def release(store: JobStore, quota: Quota, settings: Settings, job: Job, send: Send) -> bool:
    """Give back the job's slot (its task ended upstream, or it ended) and admit the next job into it."""
    scope = scope_of(job)
    if scope is None or not quota.release_slot(scope, job.ref):
        return False
    dispatch(store, quota, settings, job.request.model, send)
    return True
