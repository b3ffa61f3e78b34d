"""The long-running commands, each in the foreground against the configured services and starting none of them
(a missing Redis, or a worker's missing API key, ends them at once with exit code 3):
`genq worker` (a Celery worker of the stages or of webhook delivery's lane), `genq beat` (restarted on a lost
Redis), `genq flower` (Celery's web monitor) and `genq sim` (the DashScope simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from minio.error import S3Error
from rich.text import Text

from config.celery_app import CALL_QUEUE, beat_config, configure, create_app
from producer.beat import run_beat
from producer.cli import common
from producer.cli.common import ConfigOption, fail, settings_for
from producer.cli.display import styled
from producer.cli.services import require
from workers.bucket import ResultBucket, make_minio
from workers.errors import StorageError
from workers.webhook_signing import unsigned_warning

#: What an S3 server answers to keys it does not accept: a worker with them could store no result.
S3_REFUSALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"})


def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Processes (default: settings).")] = None,
    queues: Annotated[
        str,
        typer.Option(
            help="Queues to consume: the stages' (default); 'webhooks' for a worker of webhook delivery's own lane; "
            "'call' for the synchronous-call lane (threads, not processes: each call waits out a whole generation)."
        ),
    ] = "submit,poll,finalize,events",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (set PROMETHEUS_MULTIPROC_DIR to an empty folder first)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker in the foreground against the configured Redis (for long-lived deployments). Run at
    least one with --queues webhooks too when webhooks are used (delivery has its own lane), and one with
    --queues call when synchronous models are used (their calls have theirs)."""
    settings = settings_for(config)
    names = {q.strip() for q in queues.split(",") if q.strip()}
    if CALL_QUEUE in names and names != {CALL_QUEUE}:
        raise fail(
            f"--queues {queues}: the call lane needs a worker of its own (--queues {CALL_QUEUE}): its pool is "
            "threads, and a process of the stages must never wait out a synchronous call",
            2,
        )
    call_lane = names == {CALL_QUEUE}
    require(settings, s3=False)  # S3 may come later: the worker warns below, and its stores retry
    unsigned = unsigned_warning(settings)
    if unsigned:
        common.errors.print(styled(("WARNING:", "bold red"), f" {unsigned}"))
    # The module's app, on which the tasks run and send their follow-ups, takes these settings (file, environment
    # and flags) before the pool forks: every task of every process runs on them (config/celery_app.py).
    updates: dict[str, object] = {"metrics_port": metrics_port or settings.metrics_port}
    if call_lane and concurrency:  # its HTTP pool is sized to its threads (workers/runtime.py)
        updates["call_lane_concurrency"] = concurrency
    celery = configure(settings.model_copy(update=updates))
    try:
        ResultBucket(make_minio(settings), settings.bucket).ensure_bucket()  # genq creates its bucket at start
    except StorageError as exc:
        refusal = exc.__cause__.code if isinstance(exc.__cause__, S3Error) else None
        if refusal in S3_REFUSALS:  # wrong keys: every result would fail to be stored, so do not start
            raise fail(f"the S3 server at {settings.s3_endpoint} refused genq's keys ({refusal})", 3) from exc
        common.errors.print(
            styled(("warning:", "yellow"), f" could not check the bucket yet ({exc}); workers will retry")
        )
    celery.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency or (settings.call_lane_concurrency if call_lane else settings.worker_concurrency)),
            "--pool",
            "threads" if call_lane else "prefork",
            "-l",
            "INFO",
        ]
    )


def beat(config: ConfigOption = None) -> None:
    """Run Celery beat (the recovery sweep every few seconds; webhook delivery). Safe to run on several hosts.

    Beat exits when it loses Redis; this command starts it again (with backoff), so a Redis restart never
    leaves the fleet without its recovery sweep.
    """
    settings = settings_for(config)
    require(settings, s3=False, dashscope=False)
    unsigned = unsigned_warning(settings)
    if unsigned:
        common.errors.print(styled(("WARNING:", "bold red"), f" {unsigned}"))
    celery = configure(settings)
    celery.conf.update(beat_config(settings))
    run_beat(celery, settings.redis_url, lambda line: common.errors.print(Text(line, style="yellow")))


def flower(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run Flower (Celery's web monitor) against genq's broker; extra options go to Flower (e.g. --port=5555)."""
    settings = settings_for(config)
    require(settings, s3=False, dashscope=False)
    celery = create_app(settings)
    celery.start(["flower", *ctx.args])


def sim(
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 inside a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8089,
    profile: Annotated[str, typer.Option(help="realistic, demo, fast or hostile.")] = "demo",
    profile_file: Annotated[
        Path | None, typer.Option(help="A TOML profile (timing, limits, faults).", exists=True, dir_okay=False)
    ] = None,
    time_scale: Annotated[float | None, typer.Option(help="Multiplies every duration.")] = None,
) -> None:
    """Run the DashScope simulator in the foreground. Its API keys come from SIM_API_KEYS."""
    from ops.simulator.__main__ import main as simulator_main

    raise typer.Exit(
        simulator_main(
            [
                "--host",
                host,
                "--port",
                str(port),
                "--profile",
                profile,
                *(["--profile-file", str(profile_file)] if profile_file else []),
                *(["--time-scale", str(time_scale)] if time_scale is not None else []),
            ]
        )
    )
