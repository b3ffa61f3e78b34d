"""Reconciling a create whose outcome is unknown (it timed out, the connection dropped, the answer was
garbled, or the worker died mid-request), so that a task is never paid for twice.

The service has no idempotency key. Its advice is "do not create duplicate tasks; poll". So before sending
the same create again, genq lists the account's tasks of that model created in the window around the lost
attempt and adopts one no other job owns (ownership is recorded under `genq:task:{id}` whenever a create
succeeds, and claimed atomically here). It waits until the window has closed (the lost request's timeout has
passed) so every concurrent create that did succeed has had the time to record its owner.

Limit: the list answers no prompts. If two jobs of the same model lose their creates within the same
second, each may adopt the other's task. It is rare, and the manifest's `actual_prompts` shows it.
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
SLACK_S = 2.0  # clock and rounding slack around the window (the list takes whole seconds)


@dataclass(frozen=True)
class Reconciled:
    """`task_id` when a task from the lost create was found and adopted; `wait_s` when it is too early to look."""

    task_id: str | None = None
    wait_s: float = 0.0


def _list_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y%m%d%H%M%S")


def reconcile(rt: Runtime, job: Job, now: float) -> Reconciled:
    sent_at = job.submit_sent_at or job.created_at
    window_end = sent_at + rt.settings.http_timeout_s + SLACK_S
    if now < window_end:
        return Reconciled(wait_s=window_end - now)
    candidates = _listed(rt, job.request.model, sent_at - SLACK_S, window_end)
    for entry in sorted(candidates, key=lambda e: abs(e.get("gmt_create", 0) / 1000 - sent_at)):
        task_id = str(entry.get("task_id", ""))
        if task_id and rt.store.redis.set(keys.task_owner(task_id), job.ref, nx=True, ex=keys.TASK_OWNER_TTL_S):
            log.warning("adopted the task of a create whose answer was lost", ref=job.ref, task_id=task_id)
            return Reconciled(task_id=task_id)
    log.info("the lost create made no task; sending it again", ref=job.ref)
    return Reconciled()


def _listed(rt: Runtime, model: str, start: float, end: float) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = rt.dashscope.list_tasks(
            model_name=model, start_time=_list_time(start), end_time=_list_time(end + 1), page_no=page, page_size=100
        )
        data = answer.get("data") or []
        found += [e for e in data if start <= e.get("gmt_create", 0) / 1000 <= end + 1]
        if page >= int(answer.get("total_page") or 1) or not data:
            return found
        page += 1
