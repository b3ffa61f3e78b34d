"""Stage `poll`: ask the service how a task is doing, and decide what comes next.

Every query draws on the account's query budget (`workers/quota/budget.py`); when it is spent the poll comes
back after the wait it names, which burns nothing. Each poll renews the job's slot lease.

Not finished (any status not known to be terminal): a fresh countdown message after the poll policy's
delay, never `self.retry`, so polls burn no retries. SUCCEEDED: give the slot back at once (the upstream
slot is free now, not after our download), admit the next job into it, and hand over to finalize. FAILED:
resubmit when the code is transient and submits remain, else fail with the code. CANCELED, UNKNOWN,
or past the deadline: terminal with the reason.
"""

from __future__ import annotations

from config.catalogue import model_spec
from workers import metrics
from workers.admission import deadline_s, release, scope_of
from workers.dashscope import TaskState
from workers.dashscope.classify import is_transient_task_failure
from workers.dashscope.protocol import upstream_epoch
from workers.errors import PermanentRemoteError, Throttled, TransientRemoteError
from workers.job import Action, Job, Next, Status
from workers.poll_policy import next_poll_delay_s, policy_for
from workers.runtime import Runtime
from workers.steps import backoff_s, claim, end, load_current, log, reschedule

#: A claimed poll not recorded within this long is re-sent by the sweep (its worker died). Short, since a
#: re-sent poll only costs a query: whichever delivery records second finds the attempt moved on.
POLL_LEASE_S = 10.0


def poll(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.POLL)
    if job is None:
        return None
    current = claim(rt, job, Action.POLL, lease_s=POLL_LEASE_S, fields={"poll_count": job.poll_count + 1})
    if current is None:
        return None
    now = rt.clock()
    scope = scope_of(job)
    if scope is not None:
        rt.quota.keep_slot(scope, job.ref, lease_s=rt.settings.slot_lease_s, now=now)
    if now >= job.deadline_at:
        _deadline(rt, job, current)
        return None
    account = rt.settings.account_settings(scope.account) if scope else rt.settings.resolved_accounts()[0]
    wait_s = rt.quota.query_wait_s(account.name, account.query_qps, now, rt.rng)
    if wait_s > 0:
        # The account's query budget is spent for now: not a poll, not an error.
        return reschedule(rt, job, current, job.status, Action.POLL, wait_s, fields={"poll_count": job.poll_count})
    try:
        state = rt.client(job.account).get_task(job.task_id or "")
    except Throttled as exc:
        metrics.THROTTLED.labels(account=account.name, model=job.request.model, endpoint="query").inc()
        delay = exc.retry_after_s or backoff_s(job.throttles + 1, base_s=1.0, cap_s=30.0, rng=rt.rng)
        return reschedule(rt, job, current, job.status, Action.POLL, delay, fields={"throttles": job.throttles + 1})
    except PermanentRemoteError as exc:
        end(rt, job, current, Status.FAILED, code=exc.code, message=exc.message)
        return None
    except TransientRemoteError as exc:
        errors = job.poll_errors + 1
        if errors >= rt.settings.poll_max_errors:
            end(rt, job, current, Status.FAILED, code=exc.code, message=f"{exc.message} ({errors} polls failed)")
            return None
        delay = backoff_s(errors, base_s=2.0, cap_s=30.0, rng=rt.rng)
        return reschedule(rt, job, current, job.status, Action.POLL, delay, fields={"poll_errors": errors})
    return _on_state(rt, job, current, state)


def _observe_upstream(state: TaskState, now: float) -> None:
    """Queue time, run time and how late genq noticed the end, from the service's own timestamps."""
    submitted, scheduled, ended = (
        upstream_epoch(t or "") for t in (state.submit_time, state.scheduled_time, state.end_time)
    )
    if submitted is not None and scheduled is not None:
        metrics.UPSTREAM_QUEUE.observe(max(0.0, scheduled - submitted))
    if scheduled is not None and ended is not None:
        metrics.UPSTREAM_RUN.observe(max(0.0, ended - scheduled))
    if ended is not None:
        metrics.DETECTION_LAG.observe(max(0.0, now - ended))


def _on_state(rt: Runtime, job: Job, current: int, state: TaskState) -> Next | None:
    upstream = state.upstream_times()
    if state.status in {"SUCCEEDED", "FAILED"}:
        _observe_upstream(state, rt.clock())
    if state.status == "SUCCEEDED":
        if not state.urls:
            end(
                rt,
                job,
                current,
                Status.FAILED,
                code=_first_code(state) or "NoResults",
                message=_first_message(state) or "task succeeded without a result URL",
                fields=upstream,
            )
            return None
        step = reschedule(
            rt,
            job,
            current,
            Status.DOWNLOADING,
            Action.FINALIZE,
            0.0,
            fields={
                **upstream,
                "results": [r.to_dict() for r in state.results],
                "usage": state.usage,
                "results_at": rt.clock(),
                "poll_errors": 0,
            },
        )
        if step is not None:
            release(rt.store, rt.quota, rt.settings, job, rt.send)
        return step
    if state.status == "FAILED":
        return _on_failed(rt, job, current, state)
    if state.status == "CANCELED":
        end(
            rt,
            job,
            current,
            Status.CANCELED,
            code="Canceled",
            message="the task was canceled upstream",
            fields=upstream,
        )
        return None
    if state.status == "UNKNOWN":
        end(
            rt,
            job,
            current,
            Status.EXPIRED,
            code="TaskUnknown",
            message="the service no longer knows the task (expired after 24 h, or unknown id)",
            fields=upstream,
        )
        return None
    # PENDING, RUNNING, or a status this version does not know: not terminal, poll again.
    status = Status.RUNNING if state.status == "RUNNING" else job.status
    now = rt.clock()
    delay = next_poll_delay_s(
        policy_for(rt.settings, model_spec(job.request.model).kind),
        elapsed_s=now - (job.submitted_at or now),
        previous_delay_s=job.poll_delay_s,
        remaining_s=job.deadline_at - now,
        rng=rt.rng,
    )
    return reschedule(
        rt, job, current, status, Action.POLL, delay, fields={**upstream, "poll_delay_s": delay, "poll_errors": 0}
    )


def _on_failed(rt: Runtime, job: Job, current: int, state: TaskState) -> Next | None:
    code = state.code or "TaskFailed"
    message = state.message or "the task failed upstream"
    if is_transient_task_failure(code) and job.submits < rt.settings.submit_max_attempts:
        delay = backoff_s(job.submits, base_s=2.0, cap_s=60.0, rng=rt.rng)
        log.warning("task failed transiently, resubmitting", ref=job.ref, task_id=job.task_id, code=code)
        return reschedule(
            rt,
            job,
            current,
            Status.SUBMITTING,
            Action.SUBMIT,
            delay,
            fields={"task_id": "", "last_error_code": code, "last_error_message": message},
        )
    end(rt, job, current, Status.FAILED, code=code, message=message, fields=state.upstream_times())
    return None


def _deadline(rt: Runtime, job: Job, current: int) -> None:
    """Past the deadline: try to cancel (only a PENDING task can be), then end `timed_out`."""
    allowed_s = deadline_s(rt.settings, job.request.model)
    try:
        rt.client(job.account).cancel_task(job.task_id or "")
    except (PermanentRemoteError, TransientRemoteError) as exc:
        log.info("cancel at deadline not possible", ref=job.ref, task_id=job.task_id, code=exc.code)
    end(
        rt,
        job,
        current,
        Status.TIMED_OUT,
        code="DeadlineExceeded",
        message=f"no result within the job's deadline ({allowed_s:.0f} s from admission)",
    )


def _first_code(state: TaskState) -> str | None:
    return state.code or next((r.code for r in state.results if r.code), None)


def _first_message(state: TaskState) -> str | None:
    return state.message or next((r.message for r in state.results if r.message), None)
