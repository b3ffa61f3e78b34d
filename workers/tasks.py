"""The Celery tasks: thin shells that run a stage and send the message it asks for next.

Each message carries `(ref, attempt)`. The stage does nothing unless the attempt is still current, so a
stale or duplicated message is harmless. Countdowns are clamped far below the broker's visibility timeout.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from celery import Task

from config.celery_app import MAX_COUNTDOWN_S, app
from workers.finalize import finalize as finalize_stage
from workers.job import Action
from workers.poll import poll as poll_stage
from workers.runtime import Runtime, runtime
from workers.steps import Next
from workers.submit import submit as submit_stage

Stage = Callable[[Runtime, str, int], Next | None]


def _run(stage: Stage, ref: str, attempt: int) -> None:
    batch_id, _, job_id = ref.partition("/")
    with structlog.contextvars.bound_contextvars(batch_id=batch_id, job_id=job_id):
        send(stage(runtime(), ref, attempt))


@app.task(name="genq.submit")
def submit(ref: str, attempt: int) -> None:
    _run(submit_stage, ref, attempt)


@app.task(name="genq.poll")
def poll(ref: str, attempt: int) -> None:
    _run(poll_stage, ref, attempt)


@app.task(name="genq.finalize")
def finalize(ref: str, attempt: int) -> None:
    _run(finalize_stage, ref, attempt)


TASKS: dict[Action, Task] = {Action.SUBMIT: submit, Action.POLL: poll, Action.FINALIZE: finalize}  # type: ignore[type-arg]


def send(step: Next | None) -> None:
    """Publish the message a stage asked for (nothing when it asked for none)."""
    if step is None:
        return
    countdown = min(max(0.0, step.delay_s), MAX_COUNTDOWN_S)
    TASKS[step.action].apply_async(kwargs={"ref": step.ref, "attempt": step.attempt},
                                   countdown=countdown or None)
