"""Reconciling a create whose outcome is unknown (it timed out, the connection dropped, the answer was
garbled, or the worker died mid-request), so that a task is never paid for twice.

The service has no idempotency key. Its advice is "do not create duplicate tasks; poll". So before sending
the same create again, genq lists the account's tasks of that model created in the window around the lost
attempt and adopts one no other job owns (ownership is recorded under `genq:task:{id}` whenever a create
succeeds, and claimed atomically here). It waits until the window has closed (the lost request's timeout has
passed) so every concurrent create that did succeed has had the time to record its owner.

The list answers no prompts, only each task's creation time in milliseconds. A task is a candidate only if it
was created between the moment the lost create was sent and the moment genq stopped waiting for its answer,
widened by `GENQ_RECONCILE_CLOCK_SKEW_S` on each side for the service's clock. The scope's submit rate spaces
the creates of one account and model at least `1 / rate` apart (0.22 s at 5 per second), so two lost creates
can only be confused if both fail within the skew of each other, which the spacing rules out while the
skew stays under half of it. Should it still happen, the manifest's `actual_prompts` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from workers import keys
from workers.job import Job
from workers.runtime import Runtime
from workers.steps import log

UTC8 = timezone(timedelta(hours=8))
SLACK_S = 2.0  # wait this long past the window before listing: every create inside it has recorded its owner


@dataclass(frozen=True)
class Reconciled:
    """`task_id` when a task from the lost create was found and adopted; `wait_s` when it is too early to look."""

    task_id: str | None = None
    wait_s: float = 0.0


def _list_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y%m%d%H%M%S")


def reconcile(rt: Runtime, job: Job, now: float) -> Reconciled:
    sent_at = job.submit_sent_at or job.created_at
    skew = rt.settings.reconcile_clock_skew_s
    # The task, if any, was created while we waited for the answer: up to the failure, or (the worker died
    # mid-request) up to the request's timeout.
    gave_up_at = job.submit_failed_at or sent_at + rt.settings.http_timeout_s
    window_end = sent_at + rt.settings.http_timeout_s + SLACK_S
    if now < window_end:
        return Reconciled(wait_s=window_end - now)
    candidates = _listed(rt, job.account, job.request.model, sent_at - skew, gave_up_at + skew)
    for entry in sorted(candidates, key=lambda e: abs(e.get("gmt_create", 0) / 1000 - sent_at)):
        task_id = str(entry.get("task_id", ""))
        if task_id and _claim(rt, task_id, job.ref):
            log.warning("adopted the task of a create whose answer was lost", ref=job.ref, task_id=task_id)
            return Reconciled(task_id=task_id)
    log.info("the lost create made no task; sending it again", ref=job.ref)
    return Reconciled()


def _claim(rt: Runtime, task_id: str, ref: str) -> bool:
    """Own the task, unless another job does. Already owned by this job means its create did succeed and the
    worker died between recording the owner and recording the task: adopt it."""
    owner_key = keys.task_owner(task_id)
    return bool(rt.store.redis.set(owner_key, ref, nx=True, ex=keys.TASK_OWNER_TTL_S)) or (
        rt.store.redis.get(owner_key) == ref
    )


def _listed(rt: Runtime, account: str | None, model: str, start: float, end: float) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = rt.client(account).list_tasks(
            model_name=model, start_time=_list_time(start), end_time=_list_time(end + 1), page_no=page, page_size=100
        )
        data = answer.get("data") or []
        found += [e for e in data if start <= e.get("gmt_create", 0) / 1000 <= end]
        if page >= int(answer.get("total_page") or 1) or not data:
            return found
        page += 1
