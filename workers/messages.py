"""Publishing the message a stage asked for, by task name, so producers need not import the tasks."""

from __future__ import annotations

from celery import Celery

from workers.job import Next

#: The longest countdown genq schedules: far below the broker's visibility timeout (config/celery_app.py).
MAX_COUNTDOWN_S = 300.0


def publish(app: Celery, step: Next | None) -> None:
    """Send `step` as `genq.{action}` on its queue; nothing when `step` is None."""
    if step is None:
        return
    countdown = min(max(0.0, step.delay_s), MAX_COUNTDOWN_S)
    app.send_task(
        f"genq.{step.action.value}",
        kwargs={"ref": step.ref, "attempt": step.attempt},
        queue=step.action.value,
        countdown=countdown or None,
    )
