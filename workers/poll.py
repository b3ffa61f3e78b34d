"""Stage `poll`: ask the service how a task is doing, and decide what comes next.

Every query draws on the account's query budget (`workers/quota/budget.py`); when it is spent the poll comes
back after the wait it names, which burns nothing. Each poll renews the job's slot lease.

Not finished (any status not known to be terminal): a fresh countdown message after the poll policy's
delay, never `self.retry`, so polls burn no retries. SUCCEEDED: give the slot back at once (the upstream
slot is free now, not after our download), admit the next job into it, and hand over to finalize. FAILED:
resubmit when the code is transient and submits remain (and the deadline has not passed), else fail with
the code. CANCELED: terminal.

The deadline never throws away a billed result. It is checked on the answer of a query, not before one:
- SUCCEEDED (it may have ended since the last poll): finalized as usual, however late;
- PENDING: cancelled upstream (only a PENDING task can be, and then nothing is billed); the job ends
  `timed_out`. A 429 or a transient error on the cancel is "try again shortly"; a refusal means the task has
  started since, and the next query says what it is now;
- RUNNING: it cannot be cancelled and will be billed, so the job becomes `overdue` (one
  `genq.job.overdue` event): it keeps its slot (the task still occupies the account's concurrency), is polled
  every `overdue_poll_s`, and its result is stored when it ends. It is never submitted again.

A query that keeps failing never throws a paid result away either. After `poll_max_errors` failures in a row
(transient errors), or an account-level refusal (the account is paused for every job, with its event), the
task may still be running and will be billed: the job keeps its slot and is queried every `overdue_poll_s`
until an answer comes, and ends `failed` only once the task's 24 h life upstream is over (its result could no
longer be fetched). Any other refusal of a query (a proxy's 404 or 408) is treated the same way: the service
itself answers a task it does not know with `UNKNOWN`, which is judged below.

UNKNOWN (the service's word for a task expired after 24 h, or whose status it cannot tell) is believed only
when the task is that old or it is said `UNKNOWN_CONFIRMATIONS` times in a row over at least
`unknown_confirm_s` (60 s); until then the task is queried again, and a RUNNING answer in between resets the count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from workers import account_pause, metrics
from workers.admission import deadline_s, release, scope_of, settle_spend
from workers.billing import Bill
from workers.claimed import Claimed, backoff_s, claim, load_current, log
from workers.dashscope import TaskState
from workers.dashscope.classify import is_transient_task_failure
from workers.dashscope.protocol import upstream_epoch
from workers.errors import AccountError, PermanentRemoteError, RemoteError, Throttled, TransientRemoteError
from workers.events import job_event
from workers.job import TASK_LIFE_S, Action, Job, Next, Status
from workers.poll_policy import AccountLoad, TaskView, next_poll_delay_s, policy_for
from workers.quota.budget import task_query_qps
from workers.quota.quota import scopes_of
from workers.runtime import Runtime
from workers.watch import budget_for_polls, watched_task, watching

#: A claimed poll not recorded within this long is re-sent by the sweep (its worker died). Short, since a
#: re-sent poll only costs a query: whichever delivery records second finds the attempt moved on.
POLL_LEASE_S = 10.0
#: UNKNOWN answers in a row (spread over at least `unknown_confirm_s`) before a younger task is believed gone.
UNKNOWN_CONFIRMATIONS = 4
#: Refused cancels of a task still answered PENDING before it is treated as running (overdue).
CANCEL_REFUSALS_MAX = 3


def poll(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.POLL)
    if job is None:
        return None
    claimed = claim(rt, job, Action.POLL, lease_s=POLL_LEASE_S, fields={"poll_count": job.poll_count + 1})
    if claimed is None:
        return None
    now = rt.clock()
    scope = scope_of(job)
    if scope is not None:
        rt.quota.keep_slot(scope, job.ref, lease_s=rt.settings.slot_lease_s, now=now)
    account = rt.settings.account_settings(scope.account) if scope else rt.settings.resolved_accounts()[0]
    wait_s = rt.quota.query_wait_s(account.name, task_query_qps(rt.settings, account), now, rt.rng)
    if wait_s > 0:
        # The account's query budget is spent for now: not a poll, not an error.
        return claimed.stay(Action.POLL, wait_s, fields={"poll_count": job.poll_count})
    try:
        state = rt.client(job.account).get_task(job.task_id or "")
    except RemoteError as exc:
        outcome = next(handler for kind, handler in _ON_QUERY_ERROR if isinstance(exc, kind))
        return outcome(claimed, account.name, exc)
    return _on_state(claimed, state)


def _query_throttled(claimed: Claimed, account: str, exc: RemoteError) -> Next | None:
    job = claimed.job
    metrics.THROTTLED.labels(account=account, model=job.request.model, endpoint="query").inc()
    delay = _throttled_delay_s(claimed, exc, cap_s=60.0)
    return claimed.stay(Action.POLL, delay, fields={"throttles": job.throttles + 1})


def _query_refused_by_account(claimed: Claimed, account: str, exc: RemoteError) -> Next | None:
    """The key or the account was refused: paused for every job; this task may run and bill all the same."""
    if scope_of(claimed.job) is not None:
        account_pause.pause(claimed.rt.store, account, code=exc.code, message=exc.message, now=claimed.now)
    return _query_refused(claimed, account, exc)


def _query_refused(claimed: Claimed, account: str, exc: RemoteError) -> Next | None:
    """The service answers a task it does not know with 200 UNKNOWN, so a refusal here is an intermediary's (a
    proxy's 404 or 408): not an answer about the task, which may run and bill all the same."""
    return _unanswered(claimed, exc, errors=claimed.job.poll_errors + 1, slow=True)


def _query_failed(claimed: Claimed, account: str, exc: RemoteError) -> Next | None:
    errors = claimed.job.poll_errors + 1
    return _unanswered(claimed, exc, errors=errors, slow=errors >= claimed.rt.settings.poll_max_errors)


#: A failed query's outcome, by the class of its error (first match wins: order from narrow to wide).
_ON_QUERY_ERROR: list[tuple[type[RemoteError], Callable[[Claimed, str, RemoteError], Next | None]]] = [
    (Throttled, _query_throttled),
    (AccountError, _query_refused_by_account),
    (PermanentRemoteError, _query_refused),
    (RemoteError, _query_failed),  # transient, or a class this version does not know: not the task's answer
]


def _unanswered(claimed: Claimed, exc: RemoteError, *, errors: int, slow: bool) -> Next | None:
    """A query that failed. The task may still run, and a result it returns SUCCEEDED is billed whether or not
    genq asks for it: ask again (after a backoff, or every `overdue_poll_s` once failures persist) for as long as
    the task can live upstream; only past that is the job failed."""
    rt, job, now = claimed.rt, claimed.job, claimed.now
    if now - (job.submitted_at or job.created_at) >= TASK_LIFE_S:
        message = f"{exc.message} ({errors} polls failed; the task's 24 h life upstream is over)"
        claimed.end(Status.FAILED, code=exc.code, message=message)
        return None
    if slow:
        log.warning("task unreachable; polling slowly while it may still run", ref=job.ref, code=exc.code)
    delay = rt.settings.overdue_poll_s if slow else backoff_s(errors, base_s=2.0, cap_s=30.0, rng=rt.rng)
    return claimed.stay(Action.POLL, delay, fields={"poll_errors": errors})


def _observe_upstream(rt: Runtime, job: Job, state: TaskState, answered_at: float) -> None:
    """Queue time, run time and how late genq noticed the end, from the service's own timestamps: for the
    metrics, and (of a task that succeeded) as what the scope's tasks take (`workers/quota/durations.py`).
    `answered_at` is when the answer arrived, the instant a result records as `results_at`: not the claim's
    `now`, which precedes the wait for a query token and the query itself."""
    submitted, scheduled, ended = (
        upstream_epoch(t or "") for t in (state.submit_time, state.scheduled_time, state.end_time)
    )
    scope = {"account": job.account or "", "model": job.request.model}
    queue_s = run_s = None
    if submitted is not None and scheduled is not None:
        queue_s = max(0.0, scheduled - submitted)
        metrics.UPSTREAM_QUEUE.labels(**scope).observe(queue_s)
    if scheduled is not None and ended is not None:
        run_s = max(0.0, ended - scheduled)
        metrics.UPSTREAM_RUN.labels(**scope).observe(run_s)
    if ended is not None:
        metrics.DETECTION_LAG.labels(**scope).observe(max(0.0, answered_at - ended))
    if state.status == "SUCCEEDED" and job.account:
        _learn(rt, job.account, job.request.model, run_s=run_s, queue_s=queue_s, now=answered_at)


def _learn(rt: Runtime, account: str, model: str, *, run_s: float | None, queue_s: float | None, now: float) -> None:
    """Keep what the task took, best effort: learning must never stand in the way of recording a billed result."""
    try:
        rt.durations.record(account, model, run_s=run_s, queue_s=queue_s, now=now)
    except redis.RedisError as exc:
        log.warning("could not keep the task's durations", error=type(exc).__name__)


def _on_state(claimed: Claimed, state: TaskState) -> Next | None:
    # A query answered: the count of failed queries in a row starts again (on every path, overdue included).
    upstream: dict[str, Any] = {**state.upstream_times(), "task_status": state.status, "poll_errors": 0}
    if state.status != "UNKNOWN":
        upstream.update(unknown_seen=0, unknown_first_at="")
    answered_at = claimed.rt.clock()
    match state.status:
        case "SUCCEEDED":
            _observe_upstream(claimed.rt, claimed.job, state, answered_at)
            return on_succeeded(claimed, state, upstream, answered_at=answered_at)
        case "FAILED":
            _observe_upstream(claimed.rt, claimed.job, state, answered_at)
            return _on_failed(claimed, state, upstream)
        case "CANCELED":
            claimed.end(Status.CANCELED, code="Canceled", message="the task was canceled upstream", fields=upstream)
            return None
        case "UNKNOWN":
            return _on_unknown(claimed, upstream)
        case _:  # PENDING, RUNNING, or a status this version does not know: not terminal
            return _on_not_ended(claimed, state, upstream)


def _on_not_ended(claimed: Claimed, state: TaskState, upstream: dict[str, Any]) -> Next | None:
    rt, job, now = claimed.rt, claimed.job, claimed.now
    if now >= job.deadline_at or job.status is Status.OVERDUE:
        if state.status == "RUNNING" or job.status is Status.OVERDUE:
            return _overdue(claimed, upstream)
        return _cancel_at_deadline(claimed, upstream)
    status = Status.RUNNING if state.status == "RUNNING" else job.status
    delay = poll_delay_s(rt, job, state.status, upstream_epoch(state.scheduled_time or ""), now)
    return claimed.again(status, Action.POLL, delay, fields={**upstream, "poll_delay_s": delay})


def poll_delay_s(rt: Runtime, job: Job, status: str, scheduled_at: float | None, now: float) -> float:
    """When the job's task is next polled (`workers/poll_policy.py`), from what is known of it, of its scope's
    tasks, and of its account's load."""
    account = job.account or rt.settings.resolved_accounts()[0].name
    kind = rt.settings.spec(job.request.model).kind
    task = TaskView(
        status=status,
        run_elapsed_s=None if scheduled_at is None else now - scheduled_at,
        waited_s=now - (job.submitted_at or now),
        remaining_s=job.deadline_at - now,
    )
    return next_poll_delay_s(
        policy_for(rt.settings, kind),
        task,
        rt.durations.learned(account, job.request.model, kind, now),
        account_load(rt, account, job, now),
        rt.rng,
    )


def account_load(rt: Runtime, account: str, job: Job, now: float) -> AccountLoad:
    """How many of the account's tasks share its query budget, and whether its task list is watched (and covers
    this job's task: one created long ago is left to its own polls)."""
    scopes = scopes_of(rt.settings.account_settings(account), rt.settings.catalogue)
    return AccountLoad(
        budget_qps=budget_for_polls(rt, account),
        tasks_in_flight=sum(rt.quota.slots_held(scopes, now).values()),
        watched=watching(rt, account, now) and watched_task(job, now),
    )


def _throttled_delay_s(claimed: Claimed, exc: RemoteError, *, cap_s: float) -> float:
    """After a 429: the service's Retry-After, else a backoff on the job's throttles so far; at most `cap_s`."""
    retry_after_s = exc.retry_after_s if isinstance(exc, Throttled) else None
    backoff = backoff_s(claimed.job.throttles + 1, base_s=1.0, cap_s=30.0, rng=claimed.rt.rng)
    return min(retry_after_s or backoff, cap_s)


def on_succeeded(
    claimed: Claimed, state: TaskState, upstream: dict[str, Any], *, answered_at: float | None = None
) -> Next | None:
    """A task (or a synchronous call) that SUCCEEDED: record its results and what they bill, give back the slot,
    and have them downloaded; one without a result URL ends the job `failed`. `answered_at` (default: now) is when
    the answer arrived: the results' 24 h life counts from it."""
    rt, job = claimed.rt, claimed.job
    answered_at = rt.clock() if answered_at is None else answered_at
    if not state.urls:
        code = _first_code(state) or "NoResults"
        message = _first_message(state) or "task succeeded without a result URL"
        claimed.end(Status.FAILED, code=code, message=message, fields=upstream)
        return None
    results = {"results": [r.to_dict() for r in state.results], "usage": state.usage, "results_at": answered_at}
    bill = _bill_of(rt, job, state, answered_at)
    step = claimed.again(Status.DOWNLOADING, Action.FINALIZE, 0.0, fields={**upstream, **results}, bill=bill)
    if step is not None:
        metrics.BILLED_UNITS.labels(account=bill.account, model=bill.model).inc(bill.units)
        settle_spend(rt.store, rt.quota, rt.settings, job, rt.send, units=bill.units)
        release(rt.store, rt.quota, rt.settings, job, rt.send)
    return step


def _bill_of(rt: Runtime, job: Job, state: TaskState, answered_at: float) -> Bill:
    """What the service bills for the task, counted once per task: with the record of its SUCCEEDED answer (with
    the `usage` it bills by), in the same atomic step (`Bill`). Every path into `downloading` passes here, and
    that record is a compare-and-set on the attempt this delivery claimed, so a second delivery of the poll, or
    a re-sent one, finds the attempt moved on (or the job downloading) and counts nothing; a finalize that runs
    twice counts nothing either. Counted on the answer, not on the job's end, because the service bills a task
    that succeeded whether or not its results are then stored (a job can still end `failed`, its URLs
    expired). A synchronous call has no task: its answer's request id names it."""
    spec = rt.settings.spec(job.request.model)
    units = state.billed_units(spec.kind, requested_duration_s=job.request.duration_s)
    origin = state.task_id or f"call:{state.request_id or job.ref + '/' + str(job.attempt)}"
    return Bill(units, origin, job.account or "", job.request.model, answered_at)


def _on_failed(claimed: Claimed, state: TaskState, upstream: dict[str, Any]) -> Next | None:
    rt, job = claimed.rt, claimed.job
    code = state.code or "TaskFailed"
    message = state.message or "the task failed upstream"
    in_time = rt.clock() < job.deadline_at and job.status is not Status.OVERDUE
    if in_time and is_transient_task_failure(code) and job.submits < rt.settings.submit_max_attempts:
        delay = backoff_s(job.submits, base_s=2.0, cap_s=60.0, rng=rt.rng)
        log.warning("task failed transiently, resubmitting", ref=job.ref, task_id=job.task_id, code=code)
        fields = {"task_id": "", "task_status": "", "last_error_code": code, "last_error_message": message}
        return claimed.again(Status.SUBMITTING, Action.SUBMIT, delay, fields=fields)
    claimed.end(Status.FAILED, code=code, message=message, fields=upstream)
    return None


def _on_unknown(claimed: Claimed, upstream: dict[str, Any]) -> Next | None:
    """Believe UNKNOWN of a task that is 24 h old, or after it was said often enough over long enough."""
    rt, job, now = claimed.rt, claimed.job, claimed.now
    seen = job.unknown_seen + 1
    first_at = job.unknown_first_at or now
    age_s = now - (job.submitted_at or now)
    window_s = rt.settings.unknown_confirm_s
    evidence = {**upstream, "unknown_seen": seen, "unknown_first_at": first_at}
    if age_s < TASK_LIFE_S and (seen < UNKNOWN_CONFIRMATIONS or now - first_at < window_s):
        log.warning("task answered UNKNOWN; asking again before believing it", ref=job.ref, seen=seen)
        return claimed.stay(Action.POLL, window_s / (UNKNOWN_CONFIRMATIONS - 1), fields=evidence)
    message = (
        f"the service no longer knows the task: UNKNOWN {seen} times over {now - first_at:.0f} s, "
        f"{age_s / 3600:.1f} h after it was created (expired after 24 h, or an unknown id)"
    )
    claimed.end(Status.EXPIRED, code="TaskUnknown", message=message, fields=evidence)
    return None


def _overdue(claimed: Claimed, upstream: dict[str, Any]) -> Next | None:
    """Past the deadline with the task running upstream: wait for the (billed) result at a slow cadence."""
    rt, job, now = claimed.rt, claimed.job, claimed.now
    delay = rt.settings.overdue_poll_s
    if job.status is Status.OVERDUE:
        return claimed.again(Status.OVERDUE, Action.POLL, delay, fields=upstream)
    allowed_s = deadline_s(rt.settings, job.request.model)
    message = f"past the deadline ({allowed_s:.0f} s from admission) while its task runs upstream; waiting for it"
    event = job_event(job, Status.OVERDUE, now=now, error_code="DeadlineExceeded", error_message=message)
    log.warning("job overdue: its task still runs upstream", ref=job.ref, task_id=job.task_id)
    return claimed.again(Status.OVERDUE, Action.POLL, delay, fields=upstream, event=event)


def _cancel_at_deadline(claimed: Claimed, upstream: dict[str, Any]) -> Next | None:
    """Past the deadline with the task not started: cancel it (nothing billed) and end `timed_out`."""
    rt, job = claimed.rt, claimed.job
    allowed_s = deadline_s(rt.settings, job.request.model)
    try:
        rt.client(job.account).cancel_task(job.task_id or "")
    except Throttled as exc:
        # Soon, whatever Retry-After says: the task may start any moment, and cancelling it is the only way not
        # to pay for it.
        delay = _throttled_delay_s(claimed, exc, cap_s=30.0)
        return claimed.stay(Action.POLL, delay, fields={**upstream, "throttles": job.throttles + 1})
    except TransientRemoteError as exc:  # the next query says again what the task is; then the cancel is retried
        log.info("cancel at deadline failed; trying again", ref=job.ref, code=exc.code)
        delay = backoff_s(job.throttles + 1, base_s=1.0, cap_s=30.0, rng=rt.rng)
        return claimed.stay(Action.POLL, delay, fields=upstream)
    except RemoteError as exc:  # UnsupportedOperation: it started (or ended) since the query
        refusals = job.cancel_refusals + 1
        log.info("cancel at deadline refused", ref=job.ref, task_id=job.task_id, code=exc.code, refusals=refusals)
        if refusals >= CANCEL_REFUSALS_MAX:
            return _overdue(claimed, upstream)
        return claimed.stay(Action.POLL, 1.0, fields={**upstream, "cancel_refusals": refusals})
    message = (
        f"no result within the job's deadline ({allowed_s:.0f} s from admission); "
        "its task was canceled upstream before it started (nothing billed)"
    )
    claimed.end(
        Status.TIMED_OUT, code="DeadlineExceeded", message=message, fields={**upstream, "task_status": "CANCELED"}
    )
    return None


def _first_code(state: TaskState) -> str | None:
    return state.code or next((r.code for r in state.results if r.code), None)


def _first_message(state: TaskState) -> str | None:
    return state.message or next((r.message for r in state.results if r.message), None)
