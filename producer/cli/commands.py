"""The `genq` Typer app: the command table, in the order `genq --help` lists it, and the thin commands that read
or change a batch (status, watch, report, export, cancel, retry, resume), keep Redis bounded (purge), check the
setup (doctor), or feed work in (consume, run-schedule). `genq batch` lives in `batch_command.py`; the
long-running commands (worker, beat, flower, sim) in `worker_commands.py`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from config.celery_app import create_app
from config.settings import MAX_RETENTION_S, MIN_RETENTION_S, Settings
from producer.api import Genq
from producer.cli import common
from producer.cli.batch_command import batch
from producer.cli.common import ConfigOption, LocalOption, command_line, fail, settings_for
from producer.cli.display import (
    amount,
    billed_table,
    billed_words,
    budget_lines,
    cells,
    failed_table,
    money,
    quota_table,
    rejected_table,
    styled,
    summary_table,
    wait_for_batch,
)
from producer.cli.eta import eta_line
from producer.cli.export import export_batch
from producer.cli.health import beat_heart, health
from producer.cli.models_command import models
from producer.cli.report import render, store_report
from producer.cli.services import local_services
from producer.cli.worker_commands import beat, flower, sim, worker
from producer.scheduled_runs import schedule_named, scheduled_run
from producer.stream import ConsumeReport, RequestConsumer
from workers import account_pause, refs
from workers.billing import cost, utc_day
from workers.bucket import ResultBucket, make_minio
from workers.errors import StorageError
from workers.events import iso_time
from workers.jobstore import BatchSummary, JobStore
from workers.messages import publish
from workers.quota.spend import batch_ledger, day_ledger
from workers.retention import purge_finished
from workers.runtime import build_runtime, make_inbox, make_quota, make_store

app = typer.Typer(
    name="genq",
    help="Turn prompts into stored images and videos through Alibaba Cloud Model Studio (DashScope), "
    "at the volume the account's quota allows. Commands use the configured Redis, S3 server and DashScope "
    "account and start nothing; with --local, what does not answer on loopback is started for the command's "
    "duration (and the DashScope simulator when no API key is set).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def _open_batch(
    config: Path | None, local: bool, batch_id: str, *, s3: bool = False
) -> Iterator[tuple[Settings, JobStore, BatchSummary]]:
    """The services (started if needed with --local; S3 too with `s3`; never an API key: nothing here calls the
    service), the job store and the batch's summary; exit 2 if there is no such batch."""
    with local_services(settings_for(config, local=local or None), s3=s3, dashscope=False) as services:
        store = make_store(services.settings)
        summary = store.batch_summary(batch_id)
        if summary is None:
            known = ", ".join(store.batch_ids()[-10:]) or "none yet"
            raise fail(f"no batch {batch_id!r} (recent batches: {known})", 2)
        yield services.settings, store, summary


def status(
    batch_id: Annotated[str, typer.Argument(help="The batch to report on.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counters as JSON.")] = False,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Show a batch's counters by status, the quota it waits on, its rejected rows and its failed jobs."""
    console = common.console
    with _open_batch(config, local, batch_id) as (settings, store, summary):
        quota = make_quota(settings)
        ledger, held = quota.spend.read(batch_ledger(batch_id)), store.held(batch_id)
        if as_json:
            budget = {"cap": ledger.cap.__dict__, "committed_units": ledger.committed_units}
            budget.update(committed_money=ledger.committed_money, reached=ledger.reached, held=held)
            console.print_json(json.dumps({**summary.__dict__, "done": summary.done, "budget": budget}))
            return
        console.print(summary_table(summary))
        console.print("done" if summary.done else f"{summary.terminal} of {summary.total} jobs ended so far")
        billed = billed_table(summary.billed, settings, title="billed by the service")
        if billed is not None:
            console.print(billed)
        raise_it = f"raise the cap to let them go on: {command_line(settings, 'budget', batch_id, '--cap', 'N')}"
        for line in budget_lines(ledger, held, settings, whose="the batch's budget", then=raise_it):
            console.print(line)
        today = utc_day(time.time())
        for account in settings.resolved_accounts():
            day = quota.spend.read(day_ledger(today, account.name))
            then = "jobs wait in line until the next UTC day, or a higher daily cap"
            for line in budget_lines(day, 0, settings, whose=f"account {account.name} today (UTC)", then=then):
                console.print(line)
        if summary.purged:
            console.print(
                f"{summary.purged} of these jobs ended longer ago than the retention and left Redis: counted above, "
                "no longer listed; their results and manifests are in the bucket"
            )
        waits = quota_table(settings, store, quota, now=time.time())
        if waits is not None:
            console.print(waits)
        for name, pause in account_pause.all_paused(store).items():
            console.print(
                styled(
                    (f"account {name} is PAUSED", "red"),
                    f" since {pause['code']}: {pause['message']} (fix it, then: genq resume {name})",
                )
            )
        if summary.rejected:
            console.print(rejected_table(store.rejected(batch_id)))
        failed = failed_table(store, batch_id)
        if failed is not None:
            console.print(failed)


def watch(
    batch_id: Annotated[str, typer.Argument(help="The batch to watch.")],
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Stop watching after this many seconds.")] = None,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Live progress of any batch, with an ETA from the account's quota and the generation times seen so far;
    ends when the batch is done (exit 0), or at --timeout (exit 1). Starts no worker."""
    with _open_batch(config, local, batch_id) as (settings, store, _):
        summary = wait_for_batch(store, batch_id, common.console, timeout_s=timeout_s, eta=eta_line(settings, store))
        common.console.print(summary_table(summary))
    raise typer.Exit(0 if summary.done else 1)


def report(
    batch_id: Annotated[str, typer.Argument(help="The batch to report on.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the page to this file.")] = None,
    max_jobs: Annotated[int, typer.Option(min=1, help="Cards on the page at most (about 15 KB per image).")] = 2000,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """An HTML contact sheet of a batch (thumbnails, prompt, actual prompt, seed, status, error), stored in the
    bucket as BATCH/report.html and, with --out, written locally."""
    with _open_batch(config, local, batch_id, s3=True) as (settings, store, _):
        results = ResultBucket(make_minio(settings), settings.bucket)
        words = functools.partial(billed_words, settings=settings)
        page, made = render(store, results, batch_id, max_jobs=max_jobs, billed_text=words)
        try:
            key = store_report(results, batch_id, page)
        except StorageError as exc:
            raise fail(str(exc), 3) from exc
    if out is not None:
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write the report to {out}: {exc.strerror or exc}", 2) from exc
    where = f"s3://{settings.bucket}/{key}" + (f" and {out}" if out else "")
    missing = f", {made.missing} could not be read" if made.missing else ""
    common.console.print(f"report of {made.jobs} jobs, {made.images} images{missing}: {where}")


def export(
    batch_id: Annotated[str, typer.Argument(help="The batch to export.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write into (created if missing).", file_okay=False)],
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Copy a batch's stored images/videos and manifests into OUT_DIR, with a results.csv of every job and the
    contact sheet report.html (its thumbnails link to the copied files)."""
    with _open_batch(config, local, batch_id, s3=True) as (settings, store, _):
        try:
            bucket, words = (
                ResultBucket(make_minio(settings), settings.bucket),
                functools.partial(billed_words, settings=settings),
            )
            exported = export_batch(store, bucket, batch_id, out_dir, billed_text=words)
        except OSError as exc:
            raise fail(f"cannot write into {out_dir}: {exc.strerror or exc}", 2) from exc
    common.console.print(f"Exported {exported.jobs} jobs, {exported.files} files; index: {exported.csv_path}")
    common.console.print(f"Contact sheet: {exported.sheet_path}")


def doctor(config: ConfigOption = None) -> None:
    """Check Redis (persistence, eviction), S3 (bucket, write, read), the DashScope key, the catalogue and the
    clocks, as configured, starting nothing; say what is wrong. Exits 1 when something must be fixed."""
    from ops.doctor import run_checks

    console = common.console
    findings = run_checks(settings_for(config))
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for finding in findings:
        console.print(
            styled((f"{finding.level.upper():>4}", colours[finding.level]), f" {finding.check:<10} {finding.message}")
        )
    failed = [f for f in findings if f.level == "fail"]
    console.print(f"{len(failed)} problem(s) to fix" if failed else "all checks passed")
    raise typer.Exit(1 if failed else 0)


def cancel_command(
    target: Annotated[str, typer.Argument(help="A batch id, or one job as BATCH/JOB.")],
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Cancel a batch or a job: tasks still queued upstream are cancelled there; the rest are no longer polled."""
    with local_services(settings_for(config, local=local or None), s3=False) as services, Genq(services) as genq:
        report = genq.cancel(target)
    common.console.print(
        f"canceled {len(report.changed)} jobs ({report.upstream_canceled} cancelled upstream before they ran)"
    )
    for ref, why in report.skipped.items():
        common.console.print(f"  {ref}: {why}")


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
    local: LocalOption = False,
) -> None:
    """Run a batch's failed jobs again, except those whose error is permanent (unless --force)."""
    del failed  # a flag without a negative form: scripts may spell out `--failed`, and nothing else is retried
    console = common.console
    settings = settings_for(config, local=local or None)
    with local_services(settings, workers=1 if wait else 0) as services, Genq(services) as genq:
        report = genq.retry(batch_id, force=force)
        console.print(f"retrying {len(report.changed)} jobs; {len(report.skipped)} skipped")
        for ref, why in report.skipped.items():
            console.print(f"  {ref}: {why}")
        if wait and report.changed:
            retried = refs.split_ref(report.changed[0])[0]
            summary = wait_for_batch(genq.store, retried, console, stalled=lambda: genq.stalled(retried))
            console.print(summary_table(summary))


def resume(
    account: Annotated[str, typer.Argument(help="The account to resume (see `genq status`).")] = "default",
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Lift the pause an account-level error (bad key, arrears, access denied) put on an account."""
    with local_services(settings_for(config, local=local or None), s3=False, dashscope=False) as services:
        resumed = account_pause.resume(make_store(services.settings), account)
    common.console.print(f"account {account} resumed" if resumed else f"account {account} was not paused")


def billed(
    day: Annotated[str | None, typer.Option(help="The last UTC day to show, YYYY-MM-DD (default: today).")] = None,
    days: Annotated[int, typer.Option(min=1, max=40, help="Show this many days, up to --day (kept: 40).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """What the service billed, per UTC day, account and model (images, or seconds of video), with the cost at
    the configured prices: counted when each task's SUCCEEDED answer was recorded, once per task."""
    try:
        last = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) if day else datetime.now(UTC)
    except ValueError as exc:
        raise fail(f"--day {day!r} is not a day in the form YYYY-MM-DD", 2) from exc
    wanted = [(last - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(days - 1, -1, -1)]
    with local_services(settings_for(config, local=local or None), s3=False, dashscope=False) as services:
        store, settings = make_store(services.settings), services.settings
        by_day = {d: store.billed(d) for d in wanted}
    if as_json:
        rows = [
            {"day": d, "account": a, "model": m, "units": u, "cost": cost(u, settings.prices.get(m))}
            for d, scopes in by_day.items()
            for (a, m), u in sorted(scopes.items())
        ]
        common.console.print_json(json.dumps({"currency": settings.price_currency, "billed": rows}))
        return
    table = Table("day (UTC)", "account", "model", "billed", "cost", title="billed by the service")
    for d, scopes in by_day.items():
        for (account, model), units in sorted(scopes.items()):
            shown = amount(units, model, settings)
            table.add_row(*cells(d, account, model, shown, money(units, model, settings)))
    span = wanted[0] if days == 1 else f"{wanted[0]} to {wanted[-1]}"
    common.console.print(table if table.row_count else f"nothing billed on {span} (UTC)")


def budget(
    batch_id: Annotated[str, typer.Argument(help="The batch whose budget to show or change.")],
    cap: Annotated[
        float | None, typer.Option(min=0, help="Cap what the batch may be billed, in units (images, s of video).")
    ] = None,
    cap_money: Annotated[float | None, typer.Option(min=0, help="Cap it in money, at the configured prices.")] = None,
    no_cap: Annotated[bool, typer.Option("--no-cap", help="Remove the batch's cap.")] = False,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Show a batch's spending against its cap, or set the cap (--cap, --cap-money; --no-cap removes it): the
    jobs the cap held go back in line, and those that now fit are admitted."""
    if no_cap and (cap is not None or cap_money is not None):
        raise fail("--no-cap removes the cap: give it alone, or give --cap / --cap-money", 2)
    settings = settings_for(config, local=local or None)
    with local_services(settings, s3=False, dashscope=False) as services, Genq(services) as genq:
        try:
            if cap is not None or cap_money is not None or no_cap:
                now = genq.set_budget(batch_id, cap_units=cap, cap_money=cap_money, remove=no_cap)
            else:
                now = genq.budget(batch_id)
        except KeyError as exc:
            raise fail(str(exc.args[0]), 2) from exc
        except ValueError as exc:
            raise fail(str(exc), 2) from exc
    lines = budget_lines(now.ledger, now.held, genq.settings, whose=f"batch {batch_id}", then="raise the cap")
    for line in lines or [styled(f"batch {batch_id}: no budget cap")]:
        common.console.print(line)


#: Seconds per unit of a duration (`genq purge --older-than 36h`); no unit: seconds.
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhd]?)")


def _duration_s(text: str) -> float:
    """`36h`, `3d`, `90m`, `45s` or `129600` (seconds) as seconds; exit 2 on anything else."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise fail(f"--older-than {text!r} is not a duration (e.g. 36h, 3d, 90m, or seconds)", 2)
    seconds = float(found[1]) * _DURATION_UNITS[found[2]]
    if seconds > MAX_RETENTION_S:
        raise fail(f"--older-than {text!r} is more than ten years", 2)
    return seconds


def purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Remove jobs that ended longer ago than this: 36h, 3d, 90m, or seconds (default: GENQ_RETENTION_S).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Remove finished jobs, and finished batches with none of their jobs left, that ended longer ago than
    --older-than from Redis (beat does the same with GENQ_RETENTION_S every few minutes); their manifests and
    results stay in the bucket. Under 25 h is refused, with no override: a task and its result URLs live 24 h
    upstream, and a job's record is what stops genq from paying twice for the same request meanwhile."""
    settings = settings_for(config, local=local or None)
    older_than_s = settings.retention_s if older_than is None else _duration_s(older_than)
    if older_than_s < MIN_RETENTION_S:
        raise fail(
            f"refusing to purge jobs that ended less than 25 h ago (--older-than {older_than}): a task and its "
            "result URLs live 24 h upstream, and until then a job's record is what stops genq from paying twice for "
            "the same request (a resent request or CSV row finds its job instead of sending it again), and a task that "
            "may still run would lose its owner",
            2,
        )
    with local_services(settings, s3=False, dashscope=False) as services:
        report = purge_finished(make_store(services.settings), older_than_s)
    common.console.print(
        f"purged {report.jobs} jobs and {report.batches} batches that ended before {iso_time(report.cutoff)}"
    )


def consume(
    name: Annotated[
        str | None, typer.Option(help="This consumer's name in the group (default: host and process id).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes to start if none is attached.")] = 0,
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Read requests from the Redis stream (GENQ_REQUEST_STREAM) as part of a consumer group and turn them into
    jobs; results go out on the events stream. Runs until interrupted (SIGINT or SIGTERM)."""
    settings = settings_for(config, local=local or None)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    with local_services(settings, workers=workers) as services:
        celery = create_app(services.settings)
        consumer = RequestConsumer(
            make_store(services.settings),
            services.settings,
            lambda step: publish(celery, step),
            inbox=make_inbox(services.settings),
            quota=make_quota(services.settings),
            consumer=name or f"{socket.gethostname()}-{os.getpid()}",
        )
        common.console.print(
            f"consuming {services.settings.request_stream} as {consumer.consumer} "
            f"(group {services.settings.request_group}); Ctrl-C to stop"
        )
        totals = ConsumeReport()

        def progress(report: ConsumeReport) -> None:
            totals.add(report)
            if report.held_back:
                common.console.print("holding back: too many accepted jobs wait for quota")
            else:
                common.console.print(
                    f"read {totals.read}: {totals.accepted} accepted, {totals.known} already known, "
                    f"{totals.rejected} rejected, {totals.reclaimed} taken over from dead consumers"
                )

        with suppress(KeyboardInterrupt):
            consumer.run(lambda: bool(stopping), progress, on_round=beat_heart)
    common.console.print("stopped")


def run_schedule(
    name: Annotated[str, typer.Argument(help="A schedule of the configuration (`[[schedules]]`).")],
    config: ConfigOption = None,
    local: LocalOption = False,
) -> None:
    """Run one tick of a schedule now, as beat would: each input not yet run today becomes a batch."""
    settings = settings_for(config, local=local or None)
    try:
        schedule_named(settings, name)
    except KeyError as exc:
        raise fail(str(exc.args[0]), 2) from exc
    with local_services(settings) as services:
        rt = build_runtime(services.settings)
        celery = create_app(services.settings)
        runs = scheduled_run(rt.store, rt.quota, rt.results, rt.settings, name, lambda step: publish(celery, step))
    table = Table("input", "batch", "accepted", "already known", "rejected", "note", title=f"schedule {name}")
    for run in runs:
        table.add_row(*cells(run.source, run.batch_id, run.accepted, run.already_known, run.rejected, run.skipped))
    common.console.print(table if runs else f"schedule {name}: no input files")


# The command table: `genq --help` lists the commands in this order.
app.command()(batch)
app.command()(status)
app.command()(watch)
app.command()(report)
app.command()(export)
app.command()(doctor)
app.command()(models)
app.command("cancel")(cancel_command)
app.command("retry")(retry_command)
app.command()(resume)
app.command()(billed)
app.command()(budget)
app.command()(purge)
app.command()(consume)
app.command("run-schedule")(run_schedule)
app.command()(worker)
app.command()(beat)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(flower)
app.command()(sim)
app.command()(health)


def main() -> None:
    app()
