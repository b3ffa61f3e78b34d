"""The Celery app: build it, render its settings from `Settings`, autodiscover the tasks."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import setup_logging

from config.accounts import slot_limits
from config.logging import configure_logging
from config.settings import ConfigInvalid, Settings, load_settings

#: Webhook delivery's own lane: served by its own workers (`genq worker --queues webhooks`), so a slow or
#: black-holed receiver never holds a process of the stages (workers/webhook.py).
WEBHOOK_QUEUE = "webhooks"
#: The synchronous-call lane: a synchronous model's one call waits out the whole generation, so it is made by
#: workers whose pool is threads (`genq worker --queues call`), never by a process of the stages (workers/call.py).
CALL_QUEUE = "call"
QUEUES = ("submit", "poll", "finalize", "events", WEBHOOK_QUEUE, CALL_QUEUE)

#: With the Redis broker a worker holds every countdown message it fetched, unacknowledged; one held
#: longer than the visibility timeout is redelivered, i.e. runs twice. Keep it far above the longest
#: countdown (300 s, `workers/messages.py`) plus the longest task run (a large download).
VISIBILITY_TIMEOUT_S = 3600
#: How often beat runs the recovery sweep: a killed worker's jobs are re-sent within this plus the grace.
SWEEP_EVERY_S = 5.0
#: How often beat runs the retention purge (`workers/retention.py`): each run removes a bounded number of jobs.
PURGE_EVERY_S = 300.0


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """Periodic work: the crash-recovery sweep, the webhook tick (collects events for delivery, Redis only, and
    sets delivery going on the webhooks queue; cheap when no webhook is set), the retention purge (finished jobs
    and batches older than `retention_s` leave Redis), and the configured scheduled runs (`config/schedules.py`)."""
    entries: dict[str, Any] = {
        "genq-sweep": {"task": "genq.sweep", "schedule": SWEEP_EVERY_S, "options": {"expires": SWEEP_EVERY_S * 2}},
        "genq-webhooks": {"task": "genq.webhook_tick", "schedule": 2.0, "options": {"expires": 10}},
        "genq-purge": {"task": "genq.purge", "schedule": PURGE_EVERY_S, "options": {"expires": PURGE_EVERY_S}},
    }
    for schedule in settings.schedules:
        entries[f"genq-schedule-{schedule.name}"] = {
            "task": "genq.scheduled_run",
            "schedule": crontab(**schedule.crontab_fields()),
            "kwargs": {"name": schedule.name},
        }
    return entries


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # kombu's restore sweep puts back messages whose consumer vanished, but only once they are older
        # than the visibility timeout; it runs every interval x throttle seconds (10 x 10 by default).
        # 5 x 1 keeps that lag small. Dead workers are recovered in seconds by genq's own sweep over
        # `genq:due` instead (design.md, "The life of a job").
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # The job store is the truth; Celery's result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: ack after the task ran, and requeue when the worker process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On a lost broker connection, cancel running acks_late tasks so they are redelivered (they are
        # idempotent); Celery recommends this with acks_late and will make it the default.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # One message at a time per process, so a busy process does not sit on work others could do.
        "worker_prefetch_multiplier": 1,
        # Bound the countdown messages one worker holds in memory (~8.6 KiB each).
        "worker_eta_task_limit": 1000,
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": "submit",
        "task_routes": {
            **{f"genq.{q}": {"queue": q} for q in ("submit", "poll", "finalize")},
            "genq.call": {"queue": CALL_QUEUE},
            "genq.watch": {"queue": "poll"},  # a task-list watcher stands in for many polls
            "genq.sweep": {"queue": "events"},
            "genq.webhook_tick": {"queue": "events"},
            "genq.purge": {"queue": "events"},
            "genq.deliver_webhooks": {"queue": WEBHOOK_QUEUE},
            "genq.scheduled_run": {"queue": "events"},
        },
        # Beat: redbeat keeps the schedule and a lock in Redis, so a second beat never double-fires.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        # redbeat_redis_url is set by `genq beat` alone (`beat_config`): a worker's configuration is shown by Flower
        # and `celery inspect conf`, which mask broker_url but not this, and would show the Redis password.
        # Said explicitly: without it redbeat 2.4 warns at every start that it will stop reading the broker's
        # transport options (which it already ignores for a plain redis:// URL). The timeouts are for redbeat's
        # own client (the schedule and the lock): a Redis that hangs there ends beat's run like one that is gone,
        # and `genq beat` starts it again (producer/beat.py). Beat's sends go through kombu's connection, which
        # these do not cover.
        "redbeat_redis_options": {"socket_timeout": 10, "socket_connect_timeout": 5},
        "redbeat_lock_timeout": 30,
        "beat_max_loop_interval": 5,
        "beat_schedule": beat_schedule(settings),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "imports": ["workers.tasks", "producer.scheduled_runs"],
        # The crontabs of scheduled runs are read in this timezone.
        "timezone": settings.schedule_timezone,
        # genq's own: where the worker serves its metrics, and every scope (account, model) it reports on with
        # the scope's slot limit, so the fleet's figures are per scope whatever account this worker names
        # (workers/metrics_server.py).
        "genq_metrics": {
            "port": settings.metrics_port,
            "bind": settings.metrics_bind,
            "slot_limits": slot_limits(settings.resolved_accounts(), settings.catalogue),
            "slot_probe_s": settings.slot_probe_s,
        },
    }


def beat_config(settings: Settings) -> dict[str, Any]:
    """What beat adds to the configuration: redbeat's Redis (the broker's; said explicitly, since redbeat 2.4
    warns at every start without it and will stop falling back to broker_url)."""
    return {"redbeat_redis_url": settings.redis_url}


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app of its own, for sending (the CLI, tests); tasks are registered on the module's `app`."""
    settings = settings or load_settings()
    app = Celery("genq")
    app.conf.update(celery_config(settings))
    return app


#: The settings this process runs on: what `configure` was given, else the environment's (read on first use).
_process_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    """Make `settings` this process's settings: the module's `app` (on which the tasks are registered, and
    through which they send their follow-ups) takes its configuration from them, and `process_settings()`,
    from which each worker process builds its runtime, returns them. A worker started with `--config` or
    flags calls this before it starts, so its prefork children, forked after, inherit both."""
    global _process_settings
    _process_settings = settings
    app.conf.update(celery_config(settings))
    return app


def process_settings() -> Settings:
    """This process's settings (`configure`), or the environment's and GENQ_CONFIG's when none was given."""
    global _process_settings
    if _process_settings is None:
        _process_settings = load_settings()
    return _process_settings


@setup_logging.connect
def _use_structlog(**_: Any) -> None:
    """Celery's own log lines go through the same structlog pipeline as genq's."""
    configure_logging()


if "coverage" in sys.modules:  # measured by coverage.py (the test suite): save the pool processes' data too
    from config.coverage_hooks import install

    install()

try:
    app = create_app(process_settings())
except ConfigInvalid as exc:
    # Every genq process imports this module first (the CLI, workers, beat): settings that cannot be used end
    # it here with the setting named, exit code 2, and no traceback.
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
