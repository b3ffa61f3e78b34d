"""Stage `submit`: create the upstream task for an admitted job, honouring throttling.

The attempt is recorded (claimed) before the POST, so a duplicate delivery cannot send a second create.
A 429 is not a failure: the job is rescheduled with a cooldown and burns no retry.
"""

from __future__ import annotations

from config.catalogue import model_spec
from workers.errors import PermanentRemoteError, Throttled, TransientRemoteError
from workers.job import Action, Status
from workers.poll_policy import POLICIES
from workers.runtime import Runtime
from workers.steps import Next, backoff_s, claim, end, load_current, log, reschedule

#: How long a claimed submit may take before the recovery sweep treats it as abandoned. Above the HTTP
#: timeout, so a live create is never taken for a dead one.
SUBMIT_LEASE_S = 120.0


def submit(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.SUBMIT)
    if job is None:
        return None
    if rt.clock() >= job.deadline_at:
        end(rt, job, attempt, Status.TIMED_OUT, code="DeadlineExceeded", message="deadline passed before submit")
        return None
    now = rt.clock()
    current = claim(
        rt,
        job,
        Action.SUBMIT,
        lease_s=SUBMIT_LEASE_S,
        status=Status.SUBMITTING,
        fields={"submits": job.submits + 1, "submit_sent_at": now},
    )
    if current is None:
        return None

    try:
        task_id, request_id = rt.dashscope.create_task(job.request)
    except Throttled as exc:
        throttles = job.throttles + 1
        delay = exc.retry_after_s or backoff_s(throttles, base_s=1.0, cap_s=30.0, rng=rt.rng)
        log.info("submit throttled", ref=ref, code=exc.code, delay_s=round(delay, 2))
        # The create was refused, so nothing was paid for: it does not count as a submit.
        return reschedule(
            rt,
            job,
            current,
            Status.SUBMITTING,
            Action.SUBMIT,
            delay,
            fields={"submits": job.submits, "throttles": throttles},
        )
    except PermanentRemoteError as exc:
        end(rt, job, current, Status.FAILED, code=exc.code, message=exc.message)
        return None
    except TransientRemoteError as exc:
        errors = job.submit_errors + 1
        if errors >= rt.settings.submit_max_attempts:
            end(
                rt,
                job,
                current,
                Status.FAILED,
                code=exc.code,
                message=f"{exc.message} (gave up after {errors} attempts)",
            )
            return None
        delay = backoff_s(errors, base_s=2.0, cap_s=60.0, rng=rt.rng)
        log.warning("submit failed, will retry", ref=ref, code=exc.code, errors=errors, delay_s=round(delay, 2))
        return reschedule(rt, job, current, Status.SUBMITTING, Action.SUBMIT, delay, fields={"submit_errors": errors})

    first_delay_s = POLICIES[model_spec(job.request.model).kind].first_delay_s
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
            "submitted_at": rt.clock(),
            "poll_delay_s": first_delay_s,
        },
    )
