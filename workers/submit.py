"""Stage `submit`: create the upstream task for an admitted job, without ever paying for it twice.

Before the POST the job is claimed and marked `create_pending`; the mark is cleared as soon as the outcome is
known. A job that reaches this stage still marked (its create timed out, its answer was lost, or its worker
died mid-request) is reconciled through the task list before anything is sent again (`reconcile.py`).
The job arrives holding a slot of its account (`admission.py`); each submit renews the slot's lease. A create
goes only when the scope's submit rate and cooldown allow it (`workers/quota/`); otherwise the job comes back
after the wait they name, which is not a retry. A 429 is not a failure either: it pauses the scope for every
worker, cuts its effective rate (and, on an account with no queue upstream, its slot count: the 429 may mean
"too many tasks at once"), and the job comes back after the pause. An account-level refusal pauses the
account for every job (`accounts.py`); the jobs of a paused account wait, except that a lost create is still
reconciled (listing tasks creates nothing, and a task it made must be followed to its billed result).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from workers import account_pause, metrics
from workers.admission import scope_of
from workers.billing import SYNC_OUTCOME_UNKNOWN
from workers.claimed import Claimed, backoff_s, claim, end, load_current, log
from workers.errors import (
    AccountError,
    CreateOutcomeUnknown,
    PermanentRemoteError,
    RemoteError,
    Throttled,
    TransientRemoteError,
)
from workers.job import TASK_LIFE_S, Action, Next, Status
from workers.poll import poll_delay_s
from workers.quota.quota import Scope
from workers.reconcile import reconcile
from workers.runtime import Runtime

#: How long a claimed submit may take before the recovery sweep re-sends it. A re-sent submit that finds
#: `create_pending` reconciles (after the create's timeout has passed) instead of POSTing again, so a short
#: lease cannot cause a second paid create.
SUBMIT_LEASE_S = 15.0
#: Recorded once a create's outcome is known (a task, or none): nothing need be reconciled for it any more.
SETTLED: Mapping[str, Any] = MappingProxyType({"create_pending": 0})


def submit(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.SUBMIT)
    if job is None:
        return None
    now = rt.clock()
    if now >= job.deadline_at and not job.create_pending:
        end(rt, job, attempt, Status.TIMED_OUT, code="DeadlineExceeded", message="deadline passed before submit")
        return None
    claimed = claim(rt, job, Action.SUBMIT, lease_s=SUBMIT_LEASE_S, status=Status.SUBMITTING)
    if claimed is None:
        return None
    scope = scope_of(job) or Scope(rt.settings.resolved_accounts()[0].name, job.request.model)
    rt.quota.keep_slot(scope, job.ref, lease_s=rt.settings.slot_lease_s, now=now)
    # A lost create is reconciled even while the account is paused: reading the task list creates nothing, and
    # a task the lost create made runs (and bills) whether or not anyone follows it; its result must be stored.
    settled = False
    synchronous = rt.settings.spec(job.request.model).synchronous
    if job.create_pending and synchronous:
        # Never reached by the call lane's own paths (each clears the mark): a job revived or moved by hand. A lost
        # synchronous call has no task to reconcile; it must not be called again unasked.
        message = "a synchronous call's answer was lost; it is not called again on its own (`genq retry --force`)"
        claimed.end(Status.FAILED, code=SYNC_OUTCOME_UNKNOWN, message=message, fields=SETTLED)
        return None
    if job.create_pending:
        try:
            found = reconcile(rt, job, now)
        except (Throttled, TransientRemoteError, PermanentRemoteError) as exc:
            return _list_failed(claimed, scope, exc)
        if found.wait_s:
            return claimed.again(Status.SUBMITTING, Action.SUBMIT, found.wait_s)
        if found.task_id:
            return _submitted(claimed, found.task_id, None, scope)
        settled = True  # the lost create made no task
        if job.submit_errors >= rt.settings.submit_max_attempts:
            message = f"{job.submit_errors} creates got no usable answer, and the service made no task of them"
            claimed.end(Status.FAILED, code="CreateUnanswered", message=message, fields=SETTLED)
            return None
    if account_pause.paused(rt.store, scope.account) is not None:
        delay = rt.settings.account_pause_recheck_s * rt.rng.uniform(0.8, 1.2)
        return claimed.again(Status.SUBMITTING, Action.SUBMIT, delay, fields=SETTLED if settled else None)
    if now >= job.deadline_at:  # and the lost create, if any, made no task: nothing runs upstream
        message = "deadline passed before submit (a create whose answer was lost made no task)"
        claimed.end(Status.TIMED_OUT, code="DeadlineExceeded", message=message, fields=SETTLED)
        return None
    limits = rt.settings.limits(scope.account, scope.model)
    wait_s = rt.quota.submit_wait_s(scope, limits, rt.settings, rt.clock(), rt.rng)
    if wait_s > 0:
        # Not a retry and not a throttle: the scope's rate says "not yet".
        return claimed.again(Status.SUBMITTING, Action.SUBMIT, wait_s)
    if synchronous:
        # Its one call holds a connection for the whole generation: made on the synchronous-call lane, never in
        # a process of the stages (`workers/call.py`). The rate was taken here, as for any create.
        return claimed.again(Status.SUBMITTING, Action.CALL, 0.0)
    return _create(claimed, scope)


def _list_failed(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    """The task list could not be read to reconcile a lost create. Look again later, and never send the create
    meanwhile: the lost one may have made a task. Once no task of it can be alive any more (24 h), the job ends
    failed."""
    job, now = claimed.job, claimed.now
    if isinstance(exc, AccountError):
        account_pause.pause(claimed.rt.store, scope.account, code=exc.code, message=exc.message, now=now)
    if now - (job.submit_sent_at or job.created_at) >= TASK_LIFE_S:
        message = f"{exc.message} (the task list could not be read for 24 h after a create was lost)"
        claimed.end(Status.FAILED, code=exc.code, message=message, fields=SETTLED)
        return None
    failures = job.poll_errors + 1
    delay = backoff_s(failures, base_s=2.0, cap_s=claimed.rt.settings.overdue_poll_s, rng=claimed.rt.rng)
    log.warning("could not list tasks to reconcile; will look again", ref=job.ref, code=exc.code)
    return claimed.again(Status.SUBMITTING, Action.SUBMIT, delay, fields={"poll_errors": failures})


def _create(claimed: Claimed, scope: Scope) -> Next | None:
    rt, job = claimed.rt, claimed.job
    # Marking the create pending claims the job once more (a new attempt): anything that read the job before
    # (`genq cancel` deciding that no create is in flight) finds it moved on instead of ending it mid-create.
    sending = claimed.claim_again(
        Status.SUBMITTING,
        Action.SUBMIT,
        lease_s=SUBMIT_LEASE_S,
        fields={"create_pending": 1, "submit_sent_at": rt.clock(), "submit_failed_at": "", "submits": job.submits + 1},
    )
    if sending is None:
        return None
    rt.store.begin_create(scope.account, scope.model, job.ref, rt.clock())
    try:
        task_id, request_id = rt.client(scope.account).create_task(job.request, rt.settings.spec(job.request.model))
    except CreateOutcomeUnknown as exc:  # no answer is coming: nobody waits for it; its reconciliation decides
        rt.store.lose_create(scope.account, scope.model, job.ref)
        log.warning("create outcome unknown; will reconcile before sending again", ref=job.ref, code=exc.code)
        # Counted like a failed create (a gateway outage must not make every job create and list in a loop); if
        # the reconciliation finds no task, the create is sent again only while attempts remain.
        errors = job.submit_errors + 1
        delay = max(rt.settings.http_timeout_s / 2, backoff_s(errors, base_s=2.0, cap_s=60.0, rng=rt.rng))
        fields = {"submit_failed_at": rt.clock(), "submit_errors": errors}
        return sending.again(Status.SUBMITTING, Action.SUBMIT, delay, fields=fields)
    except RemoteError as exc:  # answered: no task was made
        rt.store.end_create(scope.account, scope.model, job.ref)
        return refused(sending, scope, exc)
    rt.quota.created(scope, rt.settings, rt.clock())
    return _submitted(sending, task_id, request_id, scope)


def refused(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    """A create (or a synchronous call, `workers/call.py`) answered with an error: nothing was created or paid for.
    What follows depends on the error's class, the first of `_ON_REFUSAL` it is an instance of."""
    outcome = next(handler for kind, handler in _ON_REFUSAL if isinstance(exc, kind))
    return outcome(claimed, scope, exc)


def _throttled(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    """A 429: the scope pauses for every worker and its rate is cut; the job comes back after the pause."""
    rt, job = claimed.rt, claimed.job
    metrics.THROTTLED.labels(account=scope.account, model=job.request.model, endpoint="create").inc()
    retry_after_s = exc.retry_after_s if isinstance(exc, Throttled) else None
    delay = rt.quota.throttled(scope, rt.settings, rt.clock(), rt.rng, retry_after_s)
    log.info("submit throttled; scope paused", ref=job.ref, code=exc.code, delay_s=round(delay, 2))
    if _may_be_concurrency(rt, scope, exc):
        limits = rt.settings.limits(scope.account, scope.model)
        upstream = _tasks_upstream(rt, scope, job.ref)
        slots = rt.quota.concurrency_refused(scope, limits, upstream, rt.settings.slot_probe_s, rt.clock())
        log.info("429 on an account without a queue upstream: slots of the scope", scope=str(scope), slots=slots)
    # Refused, so nothing was created or paid for: it does not count as a submit.
    fields = {**SETTLED, "submits": job.submits, "throttles": job.throttles + 1}
    return claimed.again(Status.SUBMITTING, Action.SUBMIT, delay, fields=fields)


#: Statuses of a job whose task is upstream and may still occupy the service's concurrency.
UPSTREAM_STATUSES = frozenset({Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})


def _may_be_concurrency(rt: Runtime, scope: Scope, exc: RemoteError) -> bool:
    """Whether a 429 may say "too many tasks at once" rather than "too many creates per second": not a burst
    refusal, on an account with no queue upstream (`concurrency_mode = "throttle"`, or `server_queue_depth = 0`).
    Where the account queues, a task beyond the concurrency waits in PENDING instead, so a 429 there is the rate's
    and must not cost a slot."""
    if exc.code.endswith("BurstRate"):
        return False
    return rt.settings.limits(scope.account, scope.model).server_queue_depth == 0


def _tasks_upstream(rt: Runtime, scope: Scope, ref: str) -> int:
    """Tasks of the scope that other jobs have upstream (created, not yet seen ended) or are creating now."""
    others = (rt.store.get(r) for r in rt.quota.slot_holders(scope, rt.clock()) if r != ref)
    return sum(
        1 for j in others if j is not None and ((j.task_id and j.status in UPSTREAM_STATUSES) or j.create_pending)
    )


def _account_refused(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    """The key or the account was refused: every job of the account waits (paused), and this one fails."""
    account_pause.pause(claimed.rt.store, scope.account, code=exc.code, message=exc.message, now=claimed.now)
    return _permanent(claimed, scope, exc)


def _permanent(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    claimed.end(Status.FAILED, code=exc.code, message=exc.message, fields=SETTLED)
    return None


def _transient(claimed: Claimed, scope: Scope, exc: RemoteError) -> Next | None:
    """Tried again after a backoff, up to `submit_max_attempts` creates."""
    rt, job = claimed.rt, claimed.job
    errors = job.submit_errors + 1
    if errors >= rt.settings.submit_max_attempts:
        message = f"{exc.message} (gave up after {errors} attempts)"
        claimed.end(Status.FAILED, code=exc.code, message=message, fields=SETTLED)
        return None
    delay = backoff_s(errors, base_s=2.0, cap_s=60.0, rng=rt.rng)
    log.warning("submit failed, will retry", ref=job.ref, code=exc.code, errors=errors, delay_s=round(delay, 2))
    return claimed.again(Status.SUBMITTING, Action.SUBMIT, delay, fields={**SETTLED, "submit_errors": errors})


#: A refused create's outcome, by the class of its error (first match wins: order from narrow to wide).
_ON_REFUSAL: list[tuple[type[RemoteError], Callable[[Claimed, Scope, RemoteError], Next | None]]] = [
    (Throttled, _throttled),
    (AccountError, _account_refused),
    (PermanentRemoteError, _permanent),
    (RemoteError, _transient),
]


def _submitted(claimed: Claimed, task_id: str, request_id: str | None, scope: Scope) -> Next | None:
    """The job's task is known: own it (never taking it from another job), then let reconciliations of the
    scope that waited on this create go on."""
    rt, job = claimed.rt, claimed.job
    if not rt.store.own_task(task_id, job.ref):
        # Only a reconciliation could have taken it, and those wait for every create in flight: a broken
        # invariant, said loudly. The job follows the task its own create made.
        log.error("task already owned by another job", ref=job.ref, task_id=task_id, owner=rt.store.task_owner(task_id))
    rt.store.end_create(scope.account, scope.model, job.ref)
    first_delay_s = poll_delay_s(rt, job, "PENDING", None, rt.clock())
    fields = {
        **SETTLED,
        "task_id": task_id,
        "request_id": request_id,
        "submitted_at": rt.clock(),
        "poll_delay_s": first_delay_s,
        "poll_errors": 0,  # task-list failures while reconciling were counted here: the polls start afresh
    }
    return claimed.again(Status.SUBMITTED, Action.POLL, first_delay_s, fields=fields)
