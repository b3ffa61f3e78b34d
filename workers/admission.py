"""Admission: moving an accepted job into `submit`.

Today every accepted job is admitted at once and the submit stage absorbs 429s with a cooldown. This is
the seam where the quota dispatcher (scope queues, leased slots, fairness across batches) plugs in: it
will call `admit` when a slot of the job's scope is free instead of the producer calling it directly.
"""

from __future__ import annotations

import time

from config.catalogue import Kind, model_spec
from config.settings import Settings
from workers.job import Action, Status
from workers.steps import Next
from workers.store import JobStore


def deadline_s(settings: Settings, model: str) -> float:
    kind = model_spec(model).kind
    return settings.video_deadline_s if kind is Kind.VIDEO else settings.image_deadline_s


def admit(store: JobStore, settings: Settings, ref: str, *, now: float | None = None) -> Next | None:
    """Admit an `accepted` job: its deadline starts now and its submit is due now."""
    now = time.time() if now is None else now
    job = store.get(ref)
    if job is None or job.status is not Status.ACCEPTED:
        return None
    applied = store.transition(
        ref,
        Status.ADMITTED,
        expected_attempt=job.attempt,
        next_action=Action.SUBMIT,
        due_at=now,
        fields={"deadline_at": now + deadline_s(settings, job.request.model)},
        now=now,
    )
    return Next(Action.SUBMIT, ref, applied.attempt) if applied.ok else None
