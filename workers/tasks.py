"""The Celery tasks: thin shells that run a stage and send the message it asks for next.

Each message carries `(ref, attempt)`. The stage does nothing unless the attempt is still current, so a
stale or duplicated message is harmless. Countdowns are clamped far below the broker's visibility timeout.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from celery.signals import worker_init, worker_process_shutdown

from config.celery_app import app
from workers.finalize import finalize as finalize_stage
from workers.job import Next
from workers.messages import publish
from workers.metrics_server import process_exited, start_metrics_server
from workers.poll import poll as poll_stage
from workers.runtime import Runtime, runtime
from workers.steps import run_stage
from workers.submit import submit as submit_stage
from workers.sweep import sweep as sweep_all
from workers.webhook import deliver_pending

Stage = Callable[[Runtime, str, int], Next | None]


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool forks: the Prometheus endpoint, if configured."""
    start_metrics_server(app.conf.get("genq_metrics") or {})


@worker_process_shutdown.connect
def _pool_process_exited(pid: int | None = None, **_: Any) -> None:
    process_exited(pid or os.getpid())


def _send(step: Next | None) -> None:
    publish(app, step)


def _runtime() -> Runtime:
    """This process's runtime, sending the messages of jobs a stage admits through this app."""
    rt = runtime()
    rt.send = _send
    return rt


def _run(stage: Stage, ref: str, attempt: int) -> None:
    batch_id, _, job_id = ref.partition("/")
    # task_id is bound by the stage once the job is loaded; binding it here too resets it after the task.
    with structlog.contextvars.bound_contextvars(batch_id=batch_id, job_id=job_id, task_id=None):
        publish(app, run_stage(stage, _runtime(), ref, attempt))


@app.task(name="genq.submit")
def submit(ref: str, attempt: int) -> None:
    _run(submit_stage, ref, attempt)


@app.task(name="genq.poll")
def poll(ref: str, attempt: int) -> None:
    _run(poll_stage, ref, attempt)


@app.task(name="genq.finalize")
def finalize(ref: str, attempt: int) -> None:
    _run(finalize_stage, ref, attempt)


@app.task(name="genq.sweep")
def sweep() -> None:
    """Re-send the messages of jobs whose next action is overdue (their worker died), give back slots no job
    needs, and admit waiting jobs into free slots."""
    sweep_all(_runtime(), _send)


@app.task(name="genq.deliver_webhooks")
def deliver_webhooks() -> int:
    """One round of webhook delivery (new events, and retries of failed ones)."""
    rt = _runtime()
    return deliver_pending(rt, _webhook_http(), now=rt.clock()).delivered


@functools.cache
def _webhook_http() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
