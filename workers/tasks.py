"""The Celery tasks: thin shells that run a stage and send the message it asks for next.

Each message carries `(ref, attempt)`. The stage does nothing unless the attempt is still current, so a
stale or duplicated message is harmless. Countdowns are clamped far below the broker's visibility timeout.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import httpx
import structlog
from celery.signals import worker_init, worker_process_shutdown

from config.celery_app import WEBHOOK_QUEUE, app, process_settings
from workers.call import call as call_stage
from workers.claimed import Stage, run_stage
from workers.finalize import finalize as finalize_stage
from workers.job import Next
from workers.messages import MAX_COUNTDOWN_S, publish, queued_messages
from workers.metrics_server import process_exited, start_metrics_server
from workers.poll import poll as poll_stage
from workers.retention import PURGE_RUN_BUDGET, purge_finished
from workers.runtime import Runtime, runtime
from workers.submit import submit as submit_stage
from workers.sweep import sweep as sweep_all
from workers.watch import watch_round
from workers.webhook import deliver_due, tick
from workers.webhook_signing import unsigned_warning


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool forks: the Prometheus endpoint, if configured."""
    start_metrics_server(app.conf.get("genq_metrics") or {}, str(app.conf.broker_url))


@worker_init.connect
def _warn_unsigned_webhooks(sender: Any = None, **_: Any) -> None:
    """Say it loudly at start when webhooks would go out unsigned."""
    warning = unsigned_warning(process_settings())  # not runtime(): its connections must not cross the fork
    if warning:
        structlog.get_logger("genq.webhook").warning(warning)


@worker_init.connect
def _never_cancel_synchronous_calls(sender: Any = None, **_: Any) -> None:
    """A threads pool (the call lane) cannot cancel a running task: with Celery's "cancel long-running tasks on a
    lost broker connection" on, a Redis blip during a call would stop the worker (`NotImplementedError`). A
    synchronous call must not be cancelled for a redelivery anyway: its answer may carry billed images."""
    pool = getattr(sender, "pool_cls", None)
    if pool is not None and "thread" in f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}".lower():
        sender.app.conf.worker_cancel_long_running_tasks_on_connection_loss = False


@worker_process_shutdown.connect
def _pool_process_exited(pid: int | None = None, **_: Any) -> None:
    process_exited(pid or os.getpid())


def _send(step: Next | None) -> None:
    publish(app, step)


def _start_watch(account: str, token: str) -> None:
    watch.apply_async(kwargs={"account": account, "token": token})


def _runtime() -> Runtime:
    """This process's runtime, sending the messages of jobs a stage admits (and of watchers it starts) through
    this app."""
    rt = runtime()
    rt.send = _send
    rt.start_watch = _start_watch
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


@app.task(name="genq.call")
def call(ref: str, attempt: int) -> None:
    """A synchronous model's one call: on the call lane's threads, never a process of the stages."""
    _run(call_stage, ref, attempt)


@app.task(name="genq.finalize")
def finalize(ref: str, attempt: int) -> None:
    _run(finalize_stage, ref, attempt)


@app.task(name="genq.watch")
def watch(account: str, token: str, round_no: int = 0, failures: int = 0) -> None:
    """One round of an account's task-list watcher; it sends itself again while the account has tasks in flight."""
    with structlog.contextvars.bound_contextvars(account=account):
        following = watch_round(_runtime(), account, token, round_no=round_no, failures=failures)
    if following is not None:
        kwargs = {"account": account, "token": token, "round_no": following.round_no, "failures": following.failures}
        watch.apply_async(kwargs=kwargs, countdown=min(max(0.0, following.delay_s), MAX_COUNTDOWN_S))


@app.task(name="genq.sweep")
def sweep() -> None:
    """Re-send the messages of jobs whose next action is overdue (their worker died), give back slots no job
    needs, and admit waiting jobs into free slots."""
    sweep_all(_runtime(), _send)


@app.task(name="genq.purge")
def purge() -> None:
    """Remove finished jobs and batches older than the retention (`retention_s`) from Redis, a bounded number per
    run; the bucket's manifests stay."""
    rt = _runtime()
    report = purge_finished(rt.store, rt.settings.retention_s, budget=PURGE_RUN_BUDGET)
    if report.jobs or report.batches:
        structlog.get_logger("genq.retention").info(
            "purged finished jobs", jobs=report.jobs, batches=report.batches, complete=report.complete
        )


@app.task(name="genq.webhook_tick")
def webhook_tick() -> None:
    """Copy new events into the webhook outbox (Redis only: safe beside the stages) and, when one is due, set
    delivery going on the webhooks queue."""
    rt = _runtime()
    tick(rt, _send_delivery, lambda: queued_messages(app, WEBHOOK_QUEUE))


def _send_delivery() -> None:
    deliver_webhooks.apply_async(expires=120)


@app.task(name="genq.deliver_webhooks")
def deliver_webhooks() -> int:
    """Webhook delivery, on its own queue: due events (new ones and retries) for up to a few seconds."""
    rt = _runtime()
    return deliver_due(rt, _webhook_http(rt.settings.webhook_timeout_s)).delivered


@functools.cache
def _webhook_http(timeout_s: float) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
