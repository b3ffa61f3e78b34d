"""Stage `call`: a synchronous model's one call, made on the synchronous-call lane.

A synchronous model (`protocol = "multimodal-generation"`: the Qwen-Image 2.0 series, qwen-image-max) has no
task: one POST holds its connection for the whole generation (tens of seconds) and answers with the images.
Such a call must not hold a process of the stages, so `submit` (which did the admission, pause, deadline and
submit-rate checks, as for any create) hands the job to queue `call`, served by workers whose pool is threads
(`genq worker --queues call`): a waiting call costs a thread, not a process, and many wait at once. The job
keeps its slot through the call, so the scope's concurrency bounds the calls in flight (a synchronous model's
scope has no queue upstream: `AccountSettings.limits_for`).

A lost answer cannot be reconciled: the service made no task to look up, and the list of tasks does not show
the images. Before the POST the job is claimed `create_pending`, with a lease longer than the call can take
(`call_bound_s`: every phase of the call is bounded, its answer's body by wall clock). If the answer is lost
after the request may have arrived (a dropped connection, a timeout, a gateway's 5xx or timeout, an answer
without images) or the lane died during the call (the recovery sweep re-sends the message once the lease
lapsed, and this stage finds the mark), the job ends `failed`, code `SyncOutcomeUnknown`, and is NOT called
again on its own: the service may have made and billed the images, and a second call could pay for them twice.
`genq retry --force` sends it again, on the user's word (the call ended, one way or another, by its lease: a
second call can no longer overlap the first). See docs/architecture.md, "Synchronous models".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from workers.admission import scope_of
from workers.billing import SYNC_OUTCOME_UNKNOWN
from workers.claimed import Claimed, claim, load_current, log
from workers.dashscope.client import call_bound_s
from workers.dashscope.protocol import TaskState
from workers.errors import CreateOutcomeUnknown, RemoteError
from workers.job import Action, Job, Next, Status
from workers.poll import on_succeeded
from workers.quota.quota import Scope
from workers.runtime import Runtime
from workers.submit import SETTLED, refused

#: The call's lease beyond the longest the call can take (`call_bound_s`): the recovery sweep must never take a
#: call that may still be answered for a lost one (that would end a job whose billed images are about to arrive).
#: It also covers what no timeout bounds (name resolution) and a wait for Redis to record the answer.
CALL_LEASE_MARGIN_S = 120.0
#: Room left in the lease when recording an outcome gives up waiting for Redis: one more Redis timeout (connect 5 s,
#: socket 10 s) and some.
RECORD_SAFETY_S = 20.0


def call_lease_s(timeout_s: float) -> float:
    return call_bound_s(timeout_s) + CALL_LEASE_MARGIN_S


def call(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.CALL)
    if job is None:
        return None
    lease_s = call_lease_s(rt.settings.sync_call_timeout_s)
    if job.create_pending:
        # A call was sent and nobody heard its answer: this delivery is the sweep's, after the lane died. (Judged
        # first: ending a lost call needs nothing of the model, and it must never be told apart as "not sent".)
        message = _lost_message("the lane stopped during it")
        return _end_here(rt, job, lease_s, Status.FAILED, SYNC_OUTCOME_UNKNOWN, message)
    spec = rt.settings.catalogue.get(job.request.model)
    if spec is None:  # this worker's config lacks a model the submitting one has: nothing sent, nothing billed
        message = (
            f"this call-lane worker does not know the model {job.request.model!r}: give every process the same "
            "config (its `models`); nothing was sent"
        )
        return _end_here(rt, job, lease_s, Status.FAILED, "ModelUnknownToWorker", message)
    scope = scope_of(job) or Scope(rt.settings.resolved_accounts()[0].name, job.request.model)
    now = rt.clock()
    if now >= job.deadline_at:  # it waited for the lane past its deadline (no lane worker ran): nothing was sent
        message = "deadline passed before the synchronous call was made (is a `genq worker --queues call` running?)"
        return _end_here(rt, job, lease_s, Status.TIMED_OUT, "DeadlineExceeded", message)
    fields = {"create_pending": 1, "submit_sent_at": now, "submit_failed_at": "", "submits": job.submits + 1}
    claimed = claim(rt, job, Action.CALL, lease_s=lease_s, fields=fields, status=Status.SUBMITTED)
    if claimed is None:
        return None
    rt.quota.keep_slot(scope, job.ref, lease_s=max(rt.settings.slot_lease_s, lease_s), now=now)
    # Recording the outcome may wait out a Redis outage until shortly before the lease lapses (after which the
    # sweep may act on the job), leaving room for one more Redis timeout.
    record_until = time.monotonic() + lease_s - RECORD_SAFETY_S
    try:
        state = rt.client(scope.account).generate(job.request, spec, timeout_s=rt.settings.sync_call_timeout_s)
    except CreateOutcomeUnknown as exc:
        log.warning("synchronous call's answer lost; not calling again", ref=job.ref, code=exc.code)
        return _recorded(claimed, _end_lost(claimed, f"{exc.code}: {exc.message}"), record_until)
    except RemoteError as exc:  # the service's own refusal: nothing was made or billed
        return _recorded(claimed, _refusal(claimed, scope, exc), record_until)
    return _recorded(claimed, lambda: _answered(claimed, scope, state), record_until)


def _end_here(rt: Runtime, job: Job, lease_s: float, status: Status, code: str, message: str) -> Next | None:
    """End the job without a call (if this delivery still holds it): its outcome was settled before one. Nothing
    follows, so no message."""
    claimed = claim(rt, job, Action.CALL, lease_s=lease_s)
    if claimed is not None:
        claimed.end(status, code=code, message=message, fields=SETTLED)
    return None


def _end_lost(claimed: Claimed, what: str) -> Callable[[], Next | None]:
    def record() -> None:
        claimed.end(Status.FAILED, code=SYNC_OUTCOME_UNKNOWN, message=_lost_message(what), fields=SETTLED)

    return record


def _refusal(claimed: Claimed, scope: Scope, exc: RemoteError) -> Callable[[], Next | None]:
    return lambda: refused(claimed, scope, exc)


def _answered(claimed: Claimed, scope: Scope, state: TaskState) -> Next | None:
    rt = claimed.rt
    rt.quota.created(scope, rt.settings, rt.clock())
    # The answer's request id names this call's images in the bucket (there is no task id).
    return on_succeeded(claimed, state, {**SETTLED, "task_status": state.status, "request_id": state.request_id})


def _recorded(claimed: Claimed, record: Callable[[], Next | None], until: float) -> Next | None:
    """Record the call's outcome, waiting out a Redis outage until `until` (monotonic): the answer (billed images,
    perhaps) lives only in this thread until it is written, and the lease outlasts the wait, so nobody else acts
    on the job meanwhile. A record that took effect before Redis went (its follow-ups, a billed count or a slot's
    release, did not) is not made again: the job has moved on from the claim, and the sweep re-sends its next
    step and gives back its slot."""
    delay_s = 0.5
    while True:
        try:
            return record()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + delay_s > until:
                raise
            log.warning("Redis away while recording a synchronous call's answer; trying again", ref=claimed.job.ref)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 8.0)
        if not _still_claimed(claimed):
            log.warning("a synchronous call's outcome was recorded before Redis went away", ref=claimed.job.ref)
            return None


def _still_claimed(claimed: Claimed) -> bool:
    """Whether the job is still as this delivery's claim left it (the record did not take effect), as far as Redis
    answers now; an unanswered read counts as "still claimed" (the next record attempt fails the same way)."""
    try:
        job = claimed.rt.store.get(claimed.job.ref)
    except (redis.ConnectionError, redis.TimeoutError):
        return True
    return job is not None and job.attempt == claimed.attempt and job.next_action is Action.CALL


def _lost_message(what: str) -> str:
    return (
        f"the synchronous call's answer was lost ({what}); the service may have made and billed its images, which "
        "cannot be looked up without a task, so genq does not call again on its own (a second call could pay "
        "twice); `genq retry --force` sends it again"
    )
