"""What an operator does to jobs that are already in flight: cancel them, retry the failed ones.

Cancel: a job whose task is still `PENDING` upstream is cancelled there (nothing is billed); one already
running upstream cannot be, so genq just stops looking after it. A job already downloading its results is
left to finish (they are paid for). Either way the job ends `canceled` at once, by a compare-and-set that
any message still in flight then finds moved on.

A job still waiting for a slot leaves its queue; a job holding one gives it back (and the next job is admitted).

Retry: jobs that ended `failed`, `timed_out` or `expired` go back to `accepted`, in line for a slot again,
unless their error is permanent (content moderation, invalid parameter, a refused result URL, ...), which only
`force` overrides. Jobs failed by an account error are retried: resume the account first. A job whose task
may still run upstream (its last answer was not final, or a create's outcome was never known, within the
service's 24 h) is never retried, not even with `force`: that would be a second paid task beside the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers import keys
from workers.admission import dispatch, release
from workers.dashscope.classify import error_class
from workers.errors import AccountError, PermanentRemoteError, RemoteError, Throttled, TransientRemoteError
from workers.events import job_event
from workers.job import Job, Next, Status
from workers.runtime import Runtime
from workers.steps import log

RETRYABLE = frozenset({Status.FAILED, Status.TIMED_OUT, Status.EXPIRED})
#: genq's own refusals of a result: retrying would pay for the same refusal again.
_OWN_PERMANENT = frozenset(
    {"ResultHostNotAllowed", "ResultUrlScheme", "ResultUrlMalformed", "ResultTooLarge", "ResultContentType"}
)
_ACTIVE_UPSTREAM = frozenset({Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})


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


def cancel(rt: Runtime, target: str) -> ControlReport:
    report = ControlReport()
    for job in _targets(rt, target):
        if job.terminal:
            continue
        if job.status is Status.DOWNLOADING:
            report.skipped[job.ref] = "already downloading its (paid) results; left to finish"
            continue
        if job.create_pending:
            # Its create is in flight or its answer was lost: a task may exist that nobody could cancel or
            # reconcile once the job is gone. Its next step settles that; cancel again in a moment.
            report.skipped[job.ref] = "a create is in flight (or its answer was lost); cancel again in a moment"
            continue
        if job.task_id and job.status in _ACTIVE_UPSTREAM:
            try:
                rt.client(job.account).cancel_task(job.task_id)
                report.upstream_canceled += 1
            except (Throttled, TransientRemoteError) as exc:
                # The task may still be PENDING, and cancelling it is the only way not to pay for it: keep
                # the job (its polls go on) rather than abandon a task that may start and bill.
                report.skipped[job.ref] = f"the service could not cancel its task now ({exc.code}); try again"
                continue
            except RemoteError as exc:  # UnsupportedOperation: running upstream; it will finish unseen
                log.info("upstream cancel refused; no longer polling", ref=job.ref, code=exc.code)
        now = rt.clock()
        event = job_event(job, Status.CANCELED, now=now, error_code="Canceled", error_message="canceled by the user")
        applied = rt.store.transition(
            job.ref,
            Status.CANCELED,
            expected_attempt=None,
            event=event,
            now=now,
            fields={"error_code": "Canceled", "error_message": "canceled by the user"},
        )
        if applied.ok:
            report.changed.append(job.ref)
            rt.store.leave_queue(job.request.model, job.ref)
            release(rt.store, rt.quota, rt.settings, job, rt.send)
        else:
            report.skipped[job.ref] = applied.reason
    return report


def retry(rt: Runtime, target: str, *, force: bool = False) -> tuple[ControlReport, list[Next]]:
    """Revive the retryable jobs of `target` and admit what fits; return the report and the submit messages
    to send."""
    report, steps = ControlReport(), list[Next]()
    models: set[str] = set()
    for job in _targets(rt, target):
        if job.status is Status.OVERDUE:
            report.skipped[job.ref] = "overdue: its task still runs upstream (and will be billed); its result is stored"
            continue
        if job.status not in RETRYABLE:
            continue
        if not force and job.error_code and _permanent(job.error_code):
            report.skipped[job.ref] = f"{job.error_code} is permanent (use --force to retry anyway)"
            continue
        running = job.task_may_run(rt.clock())
        if running:  # not even with --force: a second task while the first may run is a second bill
            report.skipped[job.ref] = f"{running}; retrying now could pay twice (a task expires 24 h after creation)"
            continue
        if rt.store.revive(job.ref, allowed=RETRYABLE, now=rt.clock()):
            report.changed.append(job.ref)
            rt.store.requeue(job.ref, job.request.model)
            rt.store.redis.zrem(keys.DUE, job.ref)
            models.add(job.request.model)
    for model in sorted(models):
        dispatch(rt.store, rt.quota, rt.settings, model, lambda step: steps.append(step) if step else None)
    if report.changed:
        batch_id = keys.split_ref(report.changed[0])[0]
        rt.store.seal_batch(batch_id)
    return report, steps


def _permanent(code: str) -> bool:
    """A failure that a retry would only repeat. Account errors are not: the operator fixes the account first."""
    cls = error_class(code, None)
    return code in _OWN_PERMANENT or (issubclass(cls, PermanentRemoteError) and not issubclass(cls, AccountError))
