"""What an operator does to jobs that are already in flight: cancel them, retry the failed ones.

Cancel: a job whose task is still `PENDING` upstream is cancelled there (nothing is billed), and ends
`canceled`. A task already running upstream cannot be cancelled and will be billed: its job is left to finish
and store its result (dropping a paid result saves nothing), as is a job already downloading its results or
whose task has already succeeded; a cancel the service refuses while the task is still `PENDING`, or that
cannot be sent now, leaves the job as it is, to be cancelled again. Each job left is named with its reason. A
job ends `canceled` by a compare-and-set on the attempt it was read at: a job a worker moved on meanwhile (its
create sent) is judged again, and any message still in flight finds a cancelled job moved on.

A job still waiting for a slot leaves its queue; a job holding one gives it back (and the next job is admitted).

Retry: jobs that ended `failed`, `timed_out` or `expired` go back to `accepted`, in line for a slot again,
unless their error is permanent (content moderation, invalid parameter, a refused result URL, ...), which only
`force` overrides. Jobs failed by an account error are retried: resume the account first. A job whose task
may still run upstream (its last answer was not final, or a create's outcome was never known, within the
service's 24 h) is never retried, not even with `force`: that would be a second paid task beside the first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from workers import refs
from workers.admission import dispatch, release, settle_spend
from workers.claimed import log
from workers.dashscope.classify import error_class
from workers.errors import AccountError, PermanentRemoteError, RemoteError, Throttled, TransientRemoteError
from workers.events import job_event
from workers.job import REVIVABLE, Job, Next, Status
from workers.quota.budget import task_query_qps
from workers.runtime import Runtime

#: genq's own refusals of a result: retrying would pay for the same refusal again.
#: Failures of genq's own naming that a plain retry must not repeat. `SyncOutcomeUnknown`: a synchronous call whose
#: answer was lost may have been billed; calling again is the user's choice (`--force`), never a default.
_OWN_PERMANENT = frozenset(
    {
        "ResultHostNotAllowed",
        "ResultUrlScheme",
        "ResultUrlMalformed",
        "ResultTooLarge",
        "ResultContentType",
        "SyncOutcomeUnknown",
    }
)
_ACTIVE_UPSTREAM = frozenset({Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})
#: After a refused cancel, by the task's status upstream: why the job is left as it is. A task that may still
#: run, or already succeeded, is paid for (or may yet start): its job goes on and stores what it bills. Only a
#: task known to have ended unbilled (FAILED, CANCELED) lets the job end `canceled`; any other answer (UNKNOWN,
#: which the service also gives for a task it cannot tell about just now) leaves it to be cancelled again.
_LEFT_RUNNING = {
    "SUCCEEDED": "its task has already succeeded upstream (billed): its result is stored",
    "RUNNING": "its task already runs upstream and cannot be cancelled (it will be billed): left to finish, "
    "its result is stored",
    "PENDING": "the service refused to cancel its task, still PENDING upstream; try again",
}
_UNREAD = "its task could not be cancelled and its status not read now; try again"
_ENDED_UNBILLED = frozenset({"FAILED", "CANCELED"})


def _left_as_it_is(upstream: str | None) -> str:
    """Why a job whose cancel the service refused stays as it is ("" when its task ended unbilled)."""
    if upstream is None:
        return _UNREAD
    if upstream in _ENDED_UNBILLED:
        return ""
    return _LEFT_RUNNING.get(upstream, f"its task was answered {upstream} upstream, and may still bill; try again")


@dataclass
class ControlReport:
    changed: list[str] = field(default_factory=list)
    upstream_canceled: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # ref -> why


def _targets(rt: Runtime, target: str) -> list[Job]:
    """`batch` -> its jobs; `batch/job` -> that job."""
    if "/" in target:
        job = rt.store.get(target)
        return [job] if job else []
    return list(rt.store.jobs(target))


#: Times one job's cancel is tried when a worker moved the job on between reading it and ending it.
CANCEL_TRIES = 5


def cancel(rt: Runtime, target: str) -> ControlReport:
    report = ControlReport()
    # Jobs still waiting for a slot go first: cancelling them admits nothing, and once they are gone the slots
    # this cancel frees cannot admit a job of the target, whose create would then race the loop below.
    listed = sorted(_targets(rt, target), key=lambda j: j.status is not Status.ACCEPTED)
    for seen in listed:
        for _ in range(CANCEL_TRIES):
            outcome = _cancel_one(rt, seen.ref, report)
            if outcome != "attempt moved on":
                break
        else:
            report.skipped[seen.ref] = "its workers kept moving it on; cancel again"
    return report


def _cancel_one(rt: Runtime, ref: str, report: ControlReport) -> str:
    """Cancel one job as it is now (not as listed: a worker may have claimed it or sent its create since).
    Returns "attempt moved on" when a worker moved it on meanwhile, so the caller reads it again."""
    job = rt.store.get(ref)
    if job is None or job.terminal:
        return "ended"
    if job.status is Status.DOWNLOADING:
        report.skipped[ref] = "already downloading its (paid) results; left to finish"
        return "skipped"
    if job.create_pending:
        # Its create is in flight or its answer was lost: a task may exist that nobody could cancel or
        # reconcile once the job is gone. Its next step settles that; cancel again in a moment.
        report.skipped[ref] = "a create is in flight (or its answer was lost); cancel again in a moment"
        return "skipped"
    if job.task_id and job.status in _ACTIVE_UPSTREAM:
        try:
            rt.client(job.account).cancel_task(job.task_id)
            report.upstream_canceled += 1
        except (Throttled, TransientRemoteError) as exc:
            # The task may still be PENDING, and cancelling it is the only way not to pay for it: keep
            # the job (its polls go on) rather than abandon a task that may start and bill.
            report.skipped[ref] = f"the service could not cancel its task now ({exc.code}); try again"
            return "skipped"
        except RemoteError as exc:  # UnsupportedOperation: it started, or already ended, upstream
            upstream = _upstream_status(rt, job)
            left = _left_as_it_is(upstream)
            if left:
                report.skipped[ref] = left
                return "skipped"
            log.info("upstream cancel refused; the task ended unbilled", ref=ref, code=exc.code, upstream=upstream)
    now = rt.clock()
    event = job_event(job, Status.CANCELED, now=now, error_code="Canceled", error_message="canceled by the user")
    # A compare-and-set on the attempt it was read at: if a worker moved it on since (sent its create, found
    # its result), it is read and judged again.
    applied = rt.store.transition(
        ref,
        Status.CANCELED,
        expected_attempt=job.attempt,
        event=event,
        now=now,
        fields={"error_code": "Canceled", "error_message": "canceled by the user"},
    )
    if applied.ok:
        report.changed.append(ref)
        report.skipped.pop(ref, None)
        rt.store.leave_queue(job.request.model, ref)
        settle_spend(rt.store, rt.quota, rt.settings, job, rt.send, status=Status.CANCELED)
        release(rt.store, rt.quota, rt.settings, job, rt.send)
        return "canceled"
    if applied.reason != "attempt moved on":
        report.skipped[ref] = applied.reason
    return applied.reason


def _upstream_status(rt: Runtime, job: Job) -> str | None:
    """The status of the job's task, whose cancel was refused (SUCCEEDED: billed and ready, the next poll stores
    it), or None when the service cannot say now. The query waits its turn in the account's budget, so that
    cancelling a large batch does not spend the polls' queries in a burst."""
    account = job.account or rt.settings.resolved_accounts()[0].name
    qps = task_query_qps(rt.settings, rt.settings.account_settings(account))
    for _ in range(50):  # the budget names its wait: seconds at most for one query
        wait_s = rt.quota.query_wait_s(account, qps, rt.clock(), rt.rng)
        if wait_s <= 0:
            break
        time.sleep(wait_s)
    try:
        return rt.client(job.account).get_task(job.task_id or "").status
    except RemoteError:
        return None


def retry(rt: Runtime, target: str, *, force: bool = False) -> tuple[ControlReport, list[Next]]:
    """Revive the retryable jobs of `target` and admit what fits; return the report and the submit messages
    to send."""
    report, steps = ControlReport(), list[Next]()
    models: set[str] = set()
    for job in _targets(rt, target):
        if job.status is Status.OVERDUE:
            report.skipped[job.ref] = "overdue: its task still runs upstream (and will be billed); its result is stored"
            continue
        if job.status not in REVIVABLE:
            continue
        if not force and job.error_code and _permanent(job.error_code, job.error_message or ""):
            report.skipped[job.ref] = f"{job.error_code} is permanent (use --force to retry anyway)"
            continue
        running = job.task_may_run(rt.clock())
        if running:  # not even with --force: a second task while the first may run is a second bill
            report.skipped[job.ref] = f"{running}; retrying now could pay twice (a task expires 24 h after creation)"
            continue
        revived = rt.store.revive(job, now=rt.clock())
        if revived.ok:
            report.changed.append(job.ref)
            models.add(job.request.model)
        else:
            report.skipped[job.ref] = f"not revived: {revived.reason} (retry again)"
    for model in sorted(models):
        dispatch(rt.store, rt.quota, rt.settings, model, lambda step: steps.append(step) if step else None)
    if report.changed:
        batch_id = refs.split_ref(report.changed[0])[0]
        rt.store.seal_batch(batch_id)
    return report, steps


def _permanent(code: str, message: str) -> bool:
    """A failure that a retry would only repeat. Account errors are not: the operator fixes the account first (the
    message tells an account's `AccessDenied` from one that names the request's own shape, which is permanent)."""
    cls = error_class(code, None, message)
    return code in _OWN_PERMANENT or (issubclass(cls, PermanentRemoteError) and not issubclass(cls, AccountError))
