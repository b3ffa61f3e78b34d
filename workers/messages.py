"""Publishing the message a stage asked for, by task name, so producers need not import the tasks."""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.job import Next

#: The longest countdown genq schedules: far below the broker's visibility timeout (config/celery_app.py).
MAX_COUNTDOWN_S = 300.0


def queued_messages(app: Celery, queue: str) -> int:
    """Messages waiting in `queue` (kombu's Redis transport keeps a queue as a list named after it)."""
    pool: Any = app.pool  # a broker connection from the app's pool: a tick every 2 s need not open its own
    with pool.acquire(block=True) as connection:
        length = connection.default_channel.client.llen(queue)
    if length is None:
        # Seen from a pooled connection after 20 s of quiet (kombu 5.7, redis-py 8.1): ask on one of its own.
        with app.connection_for_read() as fresh:
            channel: Any = fresh.default_channel  # kombu's Redis channel
            length = channel.client.llen(queue)
    return int(length or 0)


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
