"""The `genq` command line: the top floor, and the one place outside `ops` that starts the local stack.

Exit codes: 0 every accepted job succeeded (rejected rows are reported, not fatal); 1 some job did not
succeed, or waiting timed out; 2 bad usage or unreadable input; 3 a service could not be reached or started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from config.catalogue import Kind, model_spec
from config.celery_app import create_app
from config.logging import configure_logging
from config.settings import ConfigInvalid, Settings, load_settings
from ops.localstack import LocalStack, StackError
from producer.batch import CheckReport, check_rows, enqueue_rows
from producer.beat import run_beat
from producer.csv_source import CsvFormatError, read_rows, stable_copy
from producer.display import (
    PlainConsole,
    cells,
    failed_table,
    quota_table,
    rejected_table,
    styled,
    summary_table,
    wait_for_batch,
)
from producer.eta import estimate
from producer.export import export_batch
from producer.report import render, store_report
from producer.scheduled_runs import schedule_named, scheduled_run
from producer.stream import ConsumeReport, RequestConsumer
from workers import account_pause, control, refs
from workers.bucket import ResultBucket, make_minio
from workers.errors import StorageError
from workers.jobstore import BatchSummary, JobStore, keys
from workers.messages import publish
from workers.quota.quota import Quota
from workers.runtime import build_runtime, make_store
from workers.webhook import BATCH_WEBHOOK_FIELD
from workers.webhook_signing import unsigned_warning

app = typer.Typer(
    name="genq",
    help="Turn prompts into stored images and videos through Alibaba Cloud Model Studio (DashScope), "
    "at the volume the account's quota allows. Without DASHSCOPE_API_KEY, genq runs against its local "
    "simulator; services that are not reachable on loopback are started for the command's duration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Prompts, file names, ids and upstream messages are printed as they are: never read as Rich markup (a CSV cell
# `[/oops]` would crash the output; `[link=...]` would inject a terminal hyperlink), and never with their control
# characters live (producer/display.py). genq's own colours are `styled` Text.
console = PlainConsole(stderr=False)
errors = PlainConsole(stderr=True)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A TOML settings file (else GENQ_CONFIG).", exists=True, dir_okay=False),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    configure_logging(json_lines=False) if sys.stderr.isatty() else configure_logging()
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigInvalid as exc:
        raise _fail(str(exc), 2) from exc


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(styled(("error:", "red"), f" {message}"))
    return typer.Exit(code)


def default_batch_id(path: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return slug[:64]


@app.command()
def batch(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="The prompts CSV: a header row with at least a 'prompt' column.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    batch_id: Annotated[
        str | None,
        typer.Option(
            "--batch-id",
            "-b",
            help="Name of the batch (default: the file's name). Rerunning a batch submits nothing twice.",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for rows that name none.")] = None,
    size: Annotated[str | None, typer.Option(help="W*H for rows that give none.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Images per task for rows that give none.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for rows that give none.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt for rows that give none.")] = None,
    prompt_extend: Annotated[
        bool | None, typer.Option("--prompt-extend/--no-prompt-extend", help="For rows that do not say.")
    ] = None,
    watermark: Annotated[
        bool | None, typer.Option("--watermark/--no-watermark", help="For rows that do not say.")
    ] = None,
    duration: Annotated[int | None, typer.Option(help="Video seconds for rows that give none.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait with a progress display until every job ended.")
    ] = True,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Stop waiting after this many seconds.")] = None,
    export_dir: Annotated[Path | None, typer.Option("--export", help="When done, copy results here.")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes to start if none is attached.")] = 1,
    priority: Annotated[
        int,
        typer.Option(
            min=0,
            max=9,
            help="Admission priority, 0-9: a higher band takes free slots first; batches of one band take turns.",
        ),
    ] = 5,
    webhook: Annotated[
        str | None,
        typer.Option(
            help="POST this batch's events here (signed with GENQ_WEBHOOK_SECRET), instead of GENQ_WEBHOOK_URL."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate every row and print what would be sent (jobs, images, estimated cost); send nothing. "
            "Exits 1 when a row is bad.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Validate every row of a CSV, enqueue the valid ones, and (by default) wait until they are done.

    Bad rows are listed with their line number and reason and never sent; the rest of the batch goes on.
    """
    settings = _settings(config, default_model=model)
    given = {
        "size": size,
        "n": n,
        "seed": seed,
        "negative_prompt": negative_prompt,
        "prompt_extend": prompt_extend,
        "watermark": watermark,
        "duration": duration,
    }
    defaults = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in given.items() if v is not None}
    batch_id = batch_id or default_batch_id(csv_file)
    if not refs.is_id(batch_id):
        raise _fail(f"batch id {batch_id!r} must be letters, digits, '.', '_' or '-' (at most 64)", 2)
    try:
        with stable_copy(csv_file) as stable:  # both passes read the same bytes, even from a pipe
            checked = check_rows(settings, read_rows(stable, name=str(csv_file)), defaults)
            console.print(
                f"checked {checked.valid + len(checked.rejected)} rows of {csv_file}: {checked.valid} valid "
                f"({checked.images} images), {len(checked.rejected)} rejected"
            )
            if dry_run:
                raise typer.Exit(_dry_run_report(settings, checked))
            with _stack(settings, workers=workers if wait else 0) as stack:
                code = _run_batch(
                    stack,
                    stable,
                    csv_file,
                    batch_id,
                    wait=wait,
                    timeout_s=timeout_s,
                    export_dir=export_dir,
                    webhook=webhook,
                    priority=priority,
                    defaults=defaults,
                )
    except CsvFormatError as exc:
        raise _fail(str(exc), 2) from exc
    except OSError as exc:
        raise _fail(f"cannot read {csv_file}: {exc.strerror or exc}", 2) from exc
    raise typer.Exit(code)


def _dry_run_report(settings: Settings, checked: CheckReport) -> int:
    """What a real run would send, per model, and the estimated cost; 1 when any row is bad."""
    table = Table("model", "jobs", "billed units", "estimated cost", title="dry run: nothing was sent")
    for model, jobs in sorted(checked.jobs_by_model.items()):
        units = checked.units_by_model[model]
        unit = "s of video" if model_spec(model).kind is Kind.VIDEO else "images"
        price = settings.prices.get(model)
        table.add_row(
            *cells(model, jobs, f"{units} {unit}", f"{units * price:.2f}" if price is not None else "no price")
        )
    console.print(table)
    total, unpriced = checked.estimated_cost(settings.prices)
    if settings.prices:
        note = f" (no price for {', '.join(unpriced)})" if unpriced else ""
        console.print(f"estimated cost: {total:.2f}{note}")
    else:
        console.print("no price table configured (`prices` in the config file): no cost estimate")
    if checked.rejected:
        console.print(rejected_table(checked.rejected))
        console.print(
            styled((f"{len(checked.rejected)} bad row(s)", "red"), ": fix them, or run without --dry-run to skip them")
        )
        return 1
    return 0


def _run_batch(
    stack: LocalStack,
    stable: Path,
    csv_file: Path,
    batch_id: str,
    *,
    wait: bool,
    timeout_s: float | None,
    export_dir: Path | None,
    webhook: str | None,
    priority: int,
    defaults: dict[str, str],
) -> int:
    settings = stack.settings
    store = make_store(settings)
    results = ResultBucket(make_minio(settings), settings.bucket)
    results.ensure_bucket()
    celery = create_app(settings)
    if stack.simulator_url:
        console.print(f"No DASHSCOPE_API_KEY: using the local DashScope simulator at {stack.simulator_url}")
    if webhook:
        store.redis.hset(keys.batch(batch_id), BATCH_WEBHOOK_FIELD, webhook)
    report = enqueue_rows(
        store,
        settings,
        batch_id,
        read_rows(stable, name=str(csv_file)),
        source=str(csv_file),
        send=lambda step: publish(celery, step),
        priority=priority,
        defaults=defaults,
    )
    already = sum(report.existing.values())
    console.print(
        f"batch {batch_id}: {report.rows} rows read, {report.accepted} new jobs "
        f"({report.images} images) enqueued, {already} already known, {len(report.rejected)} rejected"
    )
    if already:
        states = ", ".join(f"{n} {s}" for s, n in sorted(report.existing.items()))
        console.print(f"  already known from an earlier run, not submitted again: {states}")
    if report.rejected:
        console.print(rejected_table(store.rejected(batch_id)))
    if not wait:
        console.print(f"Not waiting. Follow it with: genq status {batch_id}")
        return 0
    summary = wait_for_batch(store, batch_id, console, timeout_s=timeout_s, eta=_eta(settings, store))
    console.print(summary_table(summary))
    failed = failed_table(store, batch_id)
    if failed is not None:
        console.print(failed)
    console.print(
        f"Results: s3://{settings.bucket}/{batch_id}/ on {settings.s3_endpoint} "
        f"(each job: {{job_id}}/{{index}}.png and manifest.json)"
    )
    if export_dir:
        exported = export_batch(store, results, batch_id, export_dir)
        console.print(f"Exported {exported.files} files and {exported.csv_path}")
    else:
        console.print(f"Copy them to a folder with: genq export {batch_id} DIR")
    counters = stack.simulator_counters()
    if counters is not None:
        made = counters["counters"].get("creates", 0)
        console.print(
            f"DashScope simulator: {made} upstream tasks created by this run, "
            f"{counters['duplicate_creates']} duplicate creates"
        )
    return 0 if summary.done and summary.succeeded == summary.total else 1


@contextmanager
def _stack(settings: Settings, *, workers: int = 0) -> Iterator[LocalStack]:
    """The local stack for one command (services started as needed); a service that cannot be reached or
    started, or S3 trouble, ends the command with its reason and exit code 3."""
    try:
        with LocalStack(settings, workers=workers) as stack:
            yield stack
    except (StackError, StorageError) as exc:
        raise _fail(str(exc), 3) from exc


@contextmanager
def _open_batch(config: Path | None, batch_id: str) -> Iterator[tuple[Settings, JobStore, BatchSummary]]:
    """The stack (started if needed), the job store and the batch's summary; exit 2 if there is no such batch."""
    with _stack(_settings(config)) as stack:
        store = make_store(stack.settings)
        summary = store.batch_summary(batch_id)
        if summary is None:
            known = ", ".join(store.batch_ids()[-10:]) or "none yet"
            raise _fail(f"no batch {batch_id!r} (recent batches: {known})", 2)
        yield stack.settings, store, summary


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="The batch to report on.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counters as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show a batch's counters by status, the quota it waits on, its rejected rows and its failed jobs."""
    with _open_batch(config, batch_id) as (settings, store, summary):
        if as_json:
            console.print_json(json.dumps({**summary.__dict__, "done": summary.done}))
            return
        console.print(summary_table(summary))
        console.print("done" if summary.done else f"{summary.terminal} of {summary.total} jobs ended so far")
        quota = quota_table(settings, store, Quota.redis(store.redis), now=time.time())
        if quota is not None:
            console.print(quota)
        for account, pause in account_pause.all_paused(store).items():
            console.print(
                styled(
                    (f"account {account} is PAUSED", "red"),
                    f" since {pause['code']}: {pause['message']} (fix it, then: genq resume {account})",
                )
            )
        if summary.rejected:
            console.print(rejected_table(store.rejected(batch_id)))
        failed = failed_table(store, batch_id)
        if failed is not None:
            console.print(failed)


@app.command()
def watch(
    batch_id: Annotated[str, typer.Argument(help="The batch to watch.")],
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Stop watching after this many seconds.")] = None,
    config: ConfigOption = None,
) -> None:
    """Live progress of any batch, with an ETA from the account's quota and the generation times seen so far;
    ends when the batch is done (exit 0), or at --timeout (exit 1). Starts no worker."""
    with _open_batch(config, batch_id) as (settings, store, _):
        summary = wait_for_batch(store, batch_id, console, timeout_s=timeout_s, eta=_eta(settings, store))
        console.print(summary_table(summary))
    raise typer.Exit(0 if summary.done else 1)


def _eta(settings: Settings, store: JobStore) -> Callable[[BatchSummary], str]:
    def describe(summary: BatchSummary) -> str:
        found = estimate(store, settings, summary.batch_id, summary.total - summary.terminal)
        return found.describe() if found else "ETA: after the first task ends"

    return describe


@app.command()
def report(
    batch_id: Annotated[str, typer.Argument(help="The batch to report on.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the page to this file.")] = None,
    max_jobs: Annotated[int, typer.Option(min=1, help="Cards on the page at most (about 15 KB per image).")] = 2000,
    config: ConfigOption = None,
) -> None:
    """An HTML contact sheet of a batch (thumbnails, prompt, actual prompt, seed, status, error), stored in the
    bucket as BATCH/report.html and, with --out, written locally."""
    with _open_batch(config, batch_id) as (settings, store, _):
        results = ResultBucket(make_minio(settings), settings.bucket)
        page, made = render(store, results, batch_id, max_jobs=max_jobs)
        try:
            key = store_report(results, batch_id, page)
        except StorageError as exc:
            raise _fail(str(exc), 3) from exc
    if out is not None:
        out.write_text(page, encoding="utf-8")
    where = f"s3://{settings.bucket}/{key}" + (f" and {out}" if out else "")
    missing = f", {made.missing} could not be read" if made.missing else ""
    console.print(f"report of {made.jobs} jobs, {made.images} images{missing}: {where}")


@app.command()
def export(
    batch_id: Annotated[str, typer.Argument(help="The batch to export.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write into (created if missing).", file_okay=False)],
    config: ConfigOption = None,
) -> None:
    """Copy a batch's stored images/videos and manifests into OUT_DIR, with a results.csv of every job."""
    with _open_batch(config, batch_id) as (settings, store, _):
        exported = export_batch(store, ResultBucket(make_minio(settings), settings.bucket), batch_id, out_dir)
    console.print(f"Exported {exported.jobs} jobs, {exported.files} files; index: {exported.csv_path}")


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check Redis (persistence, eviction), S3 (bucket, write, read), the DashScope key, the catalogue and the
    clocks, as configured, starting nothing; say what is wrong. Exits 1 when something must be fixed."""
    from ops.doctor import run_checks

    findings = run_checks(_settings(config))
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for finding in findings:
        console.print(
            styled((f"{finding.level.upper():>4}", colours[finding.level]), f" {finding.check:<10} {finding.message}")
        )
    failed = [f for f in findings if f.level == "fail"]
    console.print(f"{len(failed)} problem(s) to fix" if failed else "all checks passed")
    raise typer.Exit(1 if failed else 0)


@app.command("cancel")
def cancel_command(
    target: Annotated[str, typer.Argument(help="A batch id, or one job as BATCH/JOB.")],
    config: ConfigOption = None,
) -> None:
    """Cancel a batch or a job: tasks still queued upstream are cancelled there; the rest are no longer polled."""
    with _stack(_settings(config)) as stack:
        rt = build_runtime(stack.settings)
        celery = create_app(stack.settings)
        rt.send = lambda step: publish(celery, step)  # jobs admitted into the slots the cancel frees
        report = control.cancel(rt, target)
    console.print(
        f"canceled {len(report.changed)} jobs ({report.upstream_canceled} cancelled upstream before they ran)"
    )
    for ref, why in report.skipped.items():
        console.print(f"  {ref}: {why}")


@app.command("retry")
def retry_command(
    batch_id: Annotated[str, typer.Argument(help="The batch (or BATCH/JOB) whose failed jobs to run again.")],
    failed: Annotated[
        bool,
        typer.Option(
            "--failed", help="Retry jobs that failed, timed out or expired: the default, and the only kind retried."
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Also retry permanent failures (moderation, bad parameters).")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the retried jobs end.")] = True,
    config: ConfigOption = None,
) -> None:
    """Run a batch's failed jobs again, except those whose error is permanent (unless --force)."""
    del failed  # a flag without a negative form: scripts may spell out `--failed`, and nothing else is retried
    with _stack(_settings(config), workers=1 if wait else 0) as stack:
        rt = build_runtime(stack.settings)
        report, steps = control.retry(rt, batch_id, force=force)
        celery = create_app(stack.settings)
        for step in steps:
            publish(celery, step)
        console.print(f"retrying {len(report.changed)} jobs; {len(report.skipped)} skipped")
        for ref, why in report.skipped.items():
            console.print(f"  {ref}: {why}")
        if wait and report.changed:
            summary = wait_for_batch(rt.store, refs.split_ref(report.changed[0])[0], console)
            console.print(summary_table(summary))


@app.command()
def resume(
    account: Annotated[str, typer.Argument(help="The account to resume (see `genq status`).")] = "default",
    config: ConfigOption = None,
) -> None:
    """Lift the pause an account-level error (bad key, arrears, access denied) put on an account."""
    with _stack(_settings(config)) as stack:
        resumed = account_pause.resume(make_store(stack.settings), account)
    console.print(f"account {account} resumed" if resumed else f"account {account} was not paused")


@app.command()
def consume(
    name: Annotated[
        str | None, typer.Option(help="This consumer's name in the group (default: host and process id).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes to start if none is attached.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Read requests from the Redis stream (GENQ_REQUEST_STREAM) as part of a consumer group and turn them into
    jobs; results go out on the events stream. Runs until interrupted (SIGINT or SIGTERM)."""
    settings = _settings(config)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    with _stack(settings, workers=workers) as stack:
        celery = create_app(stack.settings)
        consumer = RequestConsumer(
            make_store(stack.settings),
            stack.settings,
            lambda step: publish(celery, step),
            consumer=name or f"{socket.gethostname()}-{os.getpid()}",
        )
        console.print(
            f"consuming {stack.settings.request_stream} as {consumer.consumer} "
            f"(group {stack.settings.request_group}); Ctrl-C to stop"
        )
        totals = ConsumeReport()

        def progress(report: ConsumeReport) -> None:
            totals.add(report)
            if report.held_back:
                console.print("holding back: too many accepted jobs wait for quota")
            else:
                console.print(
                    f"read {totals.read}: {totals.accepted} accepted, {totals.known} already known, "
                    f"{totals.rejected} rejected, {totals.reclaimed} taken over from dead consumers"
                )

        with suppress(KeyboardInterrupt):
            consumer.run(lambda: bool(stopping), progress)
    console.print("stopped")


@app.command("run-schedule")
def run_schedule(
    name: Annotated[str, typer.Argument(help="A schedule of the configuration (`[[schedules]]`).")],
    config: ConfigOption = None,
) -> None:
    """Run one tick of a schedule now, as beat would: each input not yet run today becomes a batch."""
    settings = _settings(config)
    try:
        schedule_named(settings, name)
    except KeyError as exc:
        raise _fail(str(exc.args[0]), 2) from exc
    with _stack(settings) as stack:
        rt = build_runtime(stack.settings)
        celery = create_app(stack.settings)
        runs = scheduled_run(rt.store, rt.results, rt.settings, name, lambda step: publish(celery, step))
    table = Table("input", "batch", "accepted", "already known", "rejected", "note", title=f"schedule {name}")
    for run in runs:
        table.add_row(*cells(run.source, run.batch_id, run.accepted, run.already_known, run.rejected, run.skipped))
    console.print(table if runs else f"schedule {name}: no input files")


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Processes (default: settings).")] = None,
    queues: Annotated[
        str,
        typer.Option(
            help="Queues to consume: the stages' (default), or 'webhooks' for a worker of webhook delivery's own lane."
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
    least one with --queues webhooks too when webhooks are used: delivery has its own lane."""
    settings = _settings(config)
    unsigned = unsigned_warning(settings)
    if unsigned:
        errors.print(styled(("WARNING:", "bold red"), f" {unsigned}"))
    celery = create_app(settings.model_copy(update={"metrics_port": metrics_port or settings.metrics_port}))
    try:
        ResultBucket(make_minio(settings), settings.bucket).ensure_bucket()  # genq creates its bucket at start
    except StorageError as exc:
        errors.print(styled(("warning:", "yellow"), f" could not check the bucket yet ({exc}); workers will retry"))
    celery.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency or settings.worker_concurrency),
            "--pool",
            "prefork",
            "-l",
            "INFO",
        ]
    )


@app.command()
def beat(config: ConfigOption = None) -> None:
    """Run Celery beat (the recovery sweep every few seconds; webhook delivery). Safe to run on several hosts.

    Beat exits when it loses Redis; this command starts it again (with backoff), so a Redis restart never
    leaves the fleet without its recovery sweep.
    """
    settings = _settings(config)
    unsigned = unsigned_warning(settings)
    if unsigned:
        errors.print(styled(("WARNING:", "bold red"), f" {unsigned}"))
    run_beat(create_app(settings), settings.redis_url, lambda line: errors.print(Text(line, style="yellow")))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run Flower (Celery's web monitor) against genq's broker; extra options go to Flower (e.g. --port=5555)."""
    celery = create_app(_settings(config))
    celery.start(["flower", *ctx.args])


@app.command()
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


def main() -> None:
    app()
