"""Drive jobs through the stages in-process (no Celery), following the `Next` values each stage returns; or
hand them to real workers (`publish_rows`).

Delays are compressed (each step sleeps at most `max_sleep_s`), so backoffs and poll intervals do not slow the
tests down; anything that waits on real time (reconciliation windows, the simulator's task durations) still
waits for it. Given a `VirtualClock` (the runtime's clock too), nothing sleeps: time jumps to each step's due
time, so the stages' own waits (a reconciliation window, the UNKNOWN confirmation) cost nothing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from config.celery_app import create_app
from ops.localstack import LocalStack
from producer.batch import EnqueueReport, enqueue_rows
from producer.csv_source import CsvRow
from workers.call import call
from workers.claimed import run_stage
from workers.finalize import finalize
from workers.job import Action, Next
from workers.jobstore import JobStore
from workers.messages import publish
from workers.poll import poll
from workers.runtime import Runtime, make_quota, make_store
from workers.submit import submit


class VirtualClock:
    """Time that moves only when told to (the runner jumps it to the next due step)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


STAGES: dict[Action, Callable[[Runtime, str, int], Next | None]] = {
    Action.SUBMIT: submit,
    Action.POLL: poll,
    Action.FINALIZE: finalize,
    Action.CALL: call,
}


def enqueue(rt: Runtime, *rows: dict[str, str], batch_id: str = "b", priority: int = 5) -> list[Next]:
    """Enqueue rows as a CSV batch would; return the submit messages of the jobs admitted into free slots."""
    sent: list[Next] = []
    enqueue_rows(
        rt.store,
        rt.settings,
        batch_id,
        [CsvRow(i + 2, r) for i, r in enumerate(rows)],
        source="test",
        send=lambda step: sent.append(step) if step else None,
        quota=rt.quota,
        priority=priority,
    )
    return sent


def run(
    rt: Runtime,
    steps: list[Next],
    timeout_s: float = 30,
    max_sleep_s: float = 0.2,
    until: Callable[[], bool] | None = None,
    clock: VirtualClock | None = None,
) -> list[Next]:
    """Follow every step until none is left (or `until()` holds, or time is up); return what is left. Jobs a
    stage admits into a slot it freed join the steps. Steps run in the order they fall due (as Celery's
    countdowns would run them), each wait cut to `max_sleep_s`, so a job polled often cannot starve another."""
    deadline = time.monotonic() + timeout_s
    order = itertools.count()
    queue: list[tuple[float, int, Next]] = []

    now: Callable[[], float] = clock if clock is not None else time.monotonic

    def add(step: Next | None) -> None:
        if step is not None:
            queue.append((now() + step.delay_s, next(order), step))

    for step in steps:
        add(step)
    rt.send = add
    while queue and not (until and until()):
        if time.monotonic() >= deadline:
            break
        entry = min(queue)
        queue.remove(entry)
        due, _, step = entry
        if clock is not None:
            clock.now = max(clock.now, due)
        else:
            time.sleep(max(0.0, min(due - time.monotonic(), max_sleep_s)))
        add(run_stage(STAGES[step.action], rt, step.ref, step.attempt))
    return [step for _, _, step in sorted(queue)]


def publish_rows(stack: LocalStack, batch_id: str, rows: list[CsvRow]) -> tuple[JobStore, EnqueueReport]:
    """Enqueue rows as `genq batch` does, for the stack's Celery workers; return the job store and the report."""
    settings, celery = stack.settings, create_app(stack.settings)
    store = make_store(settings)
    send = lambda step: publish(celery, step)  # noqa: E731
    report = enqueue_rows(store, settings, batch_id, rows, source="test", send=send, quota=make_quota(settings))
    return store, report


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 0.2 s; fail naming `what` if it does not hold within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def batch_done(store: JobStore, batch_id: str) -> Callable[[], bool]:
    return lambda: (summary := store.batch_summary(batch_id)) is not None and summary.done
