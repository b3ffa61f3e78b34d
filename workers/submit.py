"""Stage `submit`: create the upstream task for an admitted job, without ever paying for it twice.

Before the POST the job is claimed and marked `create_pending`; the mark is cleared as soon as the outcome is
known. A job that reaches this stage still marked (its create timed out, its answer was lost, or its worker
died mid-request) is reconciled through the task list before anything is sent again (`reconcile.py`).
The job arrives holding a slot of its account (`admission.py`); each submit renews the slot's lease. A create
goes only when the scope's submit rate and cooldown allow it (`workers/quota/`); otherwise the job comes back
after the wait they name, which is not a retry. A 429 is not a failure either: it pauses the scope for every
worker, cuts its effective rate, and the job comes back after the pause. An account-level refusal pauses the
account for every job (`accounts.py`); the jobs of a paused account wait, except that a lost create is still
reconciled (listing tasks creates nothing, and a task it made must be followed to its billed result).
"""

from __future__ import annotations

from config.catalogue import model_spec
from workers import account_pause, metrics
from workers.admission import scope_of
from workers.claimed import backoff_s, claim, end, load_current, log, reschedule
from workers.errors import (
    AccountError,
    CreateOutcomeUnknown,
    PermanentRemoteError,
    RemoteError,
    Throttled,
    TransientRemoteError,
)
from workers.job import TASK_LIFE_S, Action, Job, Next, Status
from workers.poll_policy import policy_for
from workers.quota.quota import Scope
from workers.reconcile import reconcile
from workers.runtime import Runtime

#: How long a claimed submit may take before the recovery sweep re-sends it. A re-sent submit that finds
#: `create_pending` reconciles (after the create's timeout has passed) instead of POSTing again, so a short
#: lease cannot cause a second paid create.
SUBMIT_LEASE_S = 15.0


def submit(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.SUBMIT)
    if job is None:
        return None
    now = rt.clock()
    if now >= job.deadline_at and not job.create_pending:
        end(rt, job, attempt, Status.TIMED_OUT, code="DeadlineExceeded", message="deadline passed before submit")
        return None
    current = claim(rt, job, Action.SUBMIT, lease_s=SUBMIT_LEASE_S, status=Status.SUBMITTING)
    if current is None:
        return None
    scope = scope_of(job) or Scope(rt.settings.resolved_accounts()[0].name, job.request.model)
    rt.quota.keep_slot(scope, job.ref, lease_s=rt.settings.slot_lease_s, now=now)
    # A lost create is reconciled even while the account is paused: reading the task list creates nothing, and
    # a task the lost create made runs (and bills) whether or not anyone follows it; its result must be stored.
    settled = False
    if job.create_pending:
        try:
            found = reconcile(rt, job, now)
        except (Throttled, TransientRemoteError, PermanentRemoteError) as exc:
            # The task list could not be read. Look again later, and never send the create meanwhile: the lost
            # one may have made a task. Once no task of it can be alive any more (24 h), the job ends failed.
            if isinstance(exc, AccountError):
                account_pause.pause(rt.store, scope.account, code=exc.code, message=exc.message, now=now)
            failures = job.poll_errors + 1
            if now - (job.submit_sent_at or job.created_at) >= TASK_LIFE_S:
                message = f"{exc.message} (the task list could not be read for 24 h after a create was lost)"
                end(rt, job, current, Status.FAILED, code=exc.code, message=message, fields={"create_pending": 0})
                return None
            delay = backoff_s(failures, base_s=2.0, cap_s=rt.settings.overdue_poll_s, rng=rt.rng)
            log.warning("could not list tasks to reconcile; will look again", ref=job.ref, code=exc.code)
            counted = {"poll_errors": failures}
            return reschedule(rt, job, current, Status.SUBMITTING, Action.SUBMIT, delay, fields=counted)
        if found.wait_s:
            return reschedule(rt, job, current, Status.SUBMITTING, Action.SUBMIT, found.wait_s)
        if found.task_id:
            return _submitted(rt, job, current, found.task_id, None, scope)
        settled = True  # the lost create made no task
        if job.submit_errors >= rt.settings.submit_max_attempts:
            message = f"{job.submit_errors} creates got no usable answer, and the service made no task of them"
            end(rt, job, current, Status.FAILED, code="CreateUnanswered", message=message, fields={"create_pending": 0})
            return None
    if account_pause.paused(rt.store, scope.account) is not None:
        delay = rt.settings.account_pause_recheck_s * rt.rng.uniform(0.8, 1.2)
        settle = {"create_pending": 0} if settled else None
        return reschedule(rt, job, current, Status.SUBMITTING, Action.SUBMIT, delay, fields=settle)
    if now >= job.deadline_at:  # and the lost create, if any, made no task: nothing runs upstream
        message = "deadline passed before submit (a create whose answer was lost made no task)"
        end(rt, job, current, Status.TIMED_OUT, code="DeadlineExceeded", message=message, fields={"create_pending": 0})
        return None
    limits = rt.settings.account_settings(scope.account).limits_for(scope.model)
    wait_s = rt.quota.submit_wait_s(scope, limits, rt.settings, rt.clock(), rt.rng)
    if wait_s > 0:
        # Not a retry and not a throttle: the scope's rate says "not yet".
        return reschedule(rt, job, current, Status.SUBMITTING, Action.SUBMIT, wait_s)
    return _create(rt, job, current, scope)


def _create(rt: Runtime, job: Job, current: int, scope: Scope) -> Next | None:
    # Marking the create pending claims the job once more (a new attempt): anything that read the job before
    # (`genq cancel` deciding that no create is in flight) finds it moved on instead of ending it mid-create.
    sent = rt.store.transition(
        job.ref,
        Status.SUBMITTING,
        expected_attempt=current,
        bump_attempt=True,
        next_action=Action.SUBMIT,
        due_at=rt.clock() + SUBMIT_LEASE_S,
        fields={"create_pending": 1, "submit_sent_at": rt.clock(), "submit_failed_at": "", "submits": job.submits + 1},
    )
    if not sent.ok:
        return None
    current = sent.attempt
    rt.store.begin_create(scope.account, scope.model, job.ref, rt.clock())
    try:
        task_id, request_id = rt.client(scope.account).create_task(job.request)
    except CreateOutcomeUnknown as exc:  # no answer is coming: nobody waits for it; its reconciliation decides
        rt.store.lose_create(scope.account, scope.model, job.ref)
        log.warning("create outcome unknown; will reconcile before sending again", ref=job.ref, code=exc.code)
        # Counted like a failed create (a gateway outage must not make every job create and list in a loop); if
        # the reconciliation finds no task, the create is sent again only while attempts remain.
        errors = job.submit_errors + 1
        return reschedule(
            rt,
            job,
            current,
            Status.SUBMITTING,
            Action.SUBMIT,
            max(rt.settings.http_timeout_s / 2, backoff_s(errors, base_s=2.0, cap_s=60.0, rng=rt.rng)),
            fields={"submit_failed_at": rt.clock(), "submit_errors": errors},
        )
    except RemoteError as exc:  # answered: no task was made
        rt.store.end_create(scope.account, scope.model, job.ref)
        return _refused(rt, job, current, scope, exc)
    rt.quota.created(scope, rt.settings, rt.clock())
    return _submitted(rt, job, current, task_id, request_id, scope)


def _refused(rt: Runtime, job: Job, current: int, scope: Scope, exc: RemoteError) -> Next | None:
    """A create answered with an error: nothing was created or paid for."""
    if isinstance(exc, Throttled):
        metrics.THROTTLED.labels(account=scope.account, model=job.request.model, endpoint="create").inc()
        throttles = job.throttles + 1
        delay = rt.quota.throttled(scope, rt.settings, rt.clock(), rt.rng, exc.retry_after_s)
        log.info("submit throttled; scope paused", ref=job.ref, code=exc.code, delay_s=round(delay, 2))
        # Refused, so nothing was created or paid for: it does not count as a submit.
        return reschedule(
            rt,
            job,
            current,
            Status.SUBMITTING,
            Action.SUBMIT,
            delay,
            fields={"create_pending": 0, "submits": job.submits, "throttles": throttles},
        )
    if isinstance(exc, AccountError):
        account_pause.pause(rt.store, scope.account, code=exc.code, message=exc.message, now=rt.clock())
    if isinstance(exc, PermanentRemoteError):
        end(rt, job, current, Status.FAILED, code=exc.code, message=exc.message, fields={"create_pending": 0})
        return None
    return _transient(rt, job, current, exc)


def _transient(rt: Runtime, job: Job, current: int, exc: RemoteError) -> Next | None:
    errors = job.submit_errors + 1
    if errors >= rt.settings.submit_max_attempts:
        end(
            rt,
            job,
            current,
            Status.FAILED,
            code=exc.code,
            fields={"create_pending": 0},
            message=f"{exc.message} (gave up after {errors} attempts)",
        )
        return None
    delay = backoff_s(errors, base_s=2.0, cap_s=60.0, rng=rt.rng)
    log.warning("submit failed, will retry", ref=job.ref, code=exc.code, errors=errors, delay_s=round(delay, 2))
    return reschedule(
        rt, job, current, Status.SUBMITTING, Action.SUBMIT, delay, fields={"create_pending": 0, "submit_errors": errors}
    )


def _submitted(rt: Runtime, job: Job, current: int, task_id: str, request_id: str | None, scope: Scope) -> Next | None:
    """The job's task is known: own it (never taking it from another job), then let reconciliations of the
    scope that waited on this create go on."""
    if not rt.store.own_task(task_id, job.ref):
        # Only a reconciliation could have taken it, and those wait for every create in flight: a broken
        # invariant, said loudly. The job follows the task its own create made.
        log.error("task already owned by another job", ref=job.ref, task_id=task_id, owner=rt.store.task_owner(task_id))
    rt.store.end_create(scope.account, scope.model, job.ref)
    first_delay_s = policy_for(rt.settings, model_spec(job.request.model).kind).first_delay_s
    return reschedule(
        rt,
        job,
        current,
        Status.SUBMITTED,
        Action.POLL,
        first_delay_s,
        fields={
            "task_id": task_id,
            "request_id": request_id,
            "create_pending": 0,
            "submitted_at": rt.clock(),
            "poll_delay_s": first_delay_s,
            "poll_errors": 0,  # task-list failures while reconciling were counted here: the polls start afresh
        },
    )
