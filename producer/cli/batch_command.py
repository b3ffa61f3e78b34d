"""`genq batch FILE.csv`: check every row, then either say what a run would send and cost (`--dry-run`), or
enqueue the valid rows on the services it asks for, wait with a progress display, and print the summary, the
failures and where the results are. The results and the contact sheet are copied into a folder (`--export`);
in the local form by default, beside the CSV, because the local S3 server stops when the command ends."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from config.settings import Settings
from producer.api import Genq, checked_cap
from producer.batch import CheckReport, check_rows
from producer.cli import common
from producer.cli.common import ConfigOption, LocalOption, command_line, fail, settings_for
from producer.cli.display import (
    amount,
    billed_table,
    billed_words,
    cells,
    failed_table,
    money,
    rejected_table,
    styled,
    summary_table,
    wait_for_batch,
)
from producer.cli.eta import eta_line
from producer.cli.export import export_batch
from producer.cli.services import local_services
from producer.csv_source import CsvFormatError, read_rows, stable_copy
from producer.services import Services
from workers import refs
from workers.quota.spend import Cap


def default_batch_id(path: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return slug[:64]


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
    export_dir: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="When done, copy the results, results.csv and the contact sheet report.html here. "
            "The local form does so by default, into CSVNAME-results beside the CSV.",
        ),
    ] = None,
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
    cap: Annotated[
        float | None,
        typer.Option(min=0, help="Cap what the batch may be billed, in units (images, seconds of video)."),
    ] = None,
    cap_money: Annotated[
        float | None, typer.Option(min=0, help="Cap what the batch may be billed in money, at the configured prices.")
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
    local: LocalOption = False,
) -> None:
    """Validate every row of a CSV, enqueue the valid ones, and (by default) wait until they are done.

    Bad rows are listed with their line number and reason and never sent; the rest of the batch goes on.
    """
    settings = settings_for(config, default_model=model, local=local or None)
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
    batch_cap = _cap_of(cap, cap_money)
    batch_id = batch_id or default_batch_id(csv_file)
    if not refs.is_id(batch_id):
        raise fail(f"batch id {batch_id!r} must be letters, digits, '.', '_' or '-' (at most 64)", 2)
    try:
        with stable_copy(csv_file) as stable:  # both passes read the same bytes, even from a pipe
            checked = check_rows(settings, read_rows(stable, name=str(csv_file)), defaults)
            common.console.print(
                f"checked {checked.valid + len(checked.rejected)} rows of {csv_file}: {checked.valid} valid "
                f"({checked.images} images), {len(checked.rejected)} rejected"
            )
            if dry_run:
                raise typer.Exit(_dry_run_report(settings, checked))
            with local_services(settings, workers=workers if wait else 0) as services, Genq(services) as genq:
                code = _run_batch(
                    genq,
                    services,
                    stable,
                    csv_file,
                    batch_id,
                    wait=wait,
                    timeout_s=timeout_s,
                    export_dir=export_dir or _beside(csv_file, settings),
                    export_asked=export_dir is not None,
                    webhook=webhook,
                    priority=priority,
                    defaults=defaults,
                    cap=batch_cap,
                )
    except CsvFormatError as exc:
        raise fail(str(exc), 2) from exc
    except OSError as exc:
        raise fail(f"cannot read {csv_file}: {exc.strerror or exc}", 2) from exc
    raise typer.Exit(code)


def _cap_of(units: float | None, money: float | None) -> Cap | None:
    """The batch's cap from --cap and --cap-money (None: neither given); exit 2 on one that is not a number."""
    try:
        cap = checked_cap(units, money)
    except ValueError as exc:
        raise fail(str(exc).replace("cap_units", "--cap").replace("cap_money", "--cap-money"), 2) from exc
    return cap if cap.any else None


def _beside(csv_file: Path, settings: Settings) -> Path | None:
    """The local form's results folder: `CSVNAME-results` beside the CSV (the local S3 server, with the results
    in it, stops when the command ends). None in the production form, whose results stay in its bucket."""
    return csv_file.parent / f"{csv_file.stem}-results" if settings.local else None


def _dry_run_report(settings: Settings, checked: CheckReport) -> int:
    """What a real run would send, per model, and the estimated cost; 1 when any row is bad."""
    console = common.console
    table = Table("model", "jobs", "billed units", "estimated cost", title="dry run: nothing was sent")
    for model, jobs in sorted(checked.jobs_by_model.items()):
        units = checked.units_by_model[model]
        table.add_row(*cells(model, jobs, amount(units, model, settings), money(units, model, settings)))
    console.print(table)
    total, unpriced = checked.estimated_cost(settings.prices)
    if settings.prices:
        note = f" (no price for {', '.join(unpriced)})" if unpriced else ""
        currency = f" {settings.price_currency}" if settings.price_currency else ""
        console.print(f"estimated cost: {total:.2f}{currency}{note}")
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
    genq: Genq,
    services: Services,
    stable: Path,
    csv_file: Path,
    batch_id: str,
    *,
    wait: bool,
    timeout_s: float | None,
    export_dir: Path | None,
    export_asked: bool,
    webhook: str | None,
    priority: int,
    defaults: dict[str, str],
    cap: Cap | None,
) -> int:
    console = common.console
    settings, store, results = genq.settings, genq.store, genq.results
    results.ensure_bucket()
    if services.simulator_url:
        console.print(f"No DASHSCOPE_API_KEY: using the local DashScope simulator at {services.simulator_url}")
    report = genq.submit_rows(
        read_rows(stable, name=str(csv_file)),
        batch_id=batch_id,
        source=str(csv_file),
        priority=priority,
        webhook=webhook,
        defaults=defaults,
        cap=cap,
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
        console.print(f"Not waiting. Follow it with: {command_line(settings, 'status', batch_id)}")
        return 0
    summary = wait_for_batch(
        store,
        batch_id,
        console,
        timeout_s=timeout_s,
        eta=eta_line(settings, store),
        stalled=lambda: genq.stalled(batch_id),
    )
    console.print(summary_table(summary))
    billed = billed_table(summary.billed, settings, title="billed by the service")
    if billed is not None:
        console.print(billed)
    failed = failed_table(store, batch_id)
    if failed is not None:
        console.print(failed)
    console.print(
        f"Results: s3://{settings.bucket}/{batch_id}/ on {settings.s3_endpoint} "
        f"(each job: {{job_id}}/{{index}}.png and manifest.json)"
    )
    if export_dir:
        try:
            words = functools.partial(billed_words, settings=settings)
            exported = export_batch(store, results, batch_id, export_dir, billed_text=words)
        except OSError as exc:
            why = f"cannot write into {export_dir}: {exc.strerror or exc}"
            if export_asked:
                raise fail(why, 2) from exc
            hint = command_line(settings, "export", batch_id, "DIR")
            console.print(styled((why, "red"), f"; copy them with: {hint}"))
        else:
            console.print(f"Exported {exported.files} files and {exported.csv_path}")
            console.print(f"Contact sheet: {exported.sheet_path}")
    else:
        console.print(f"Copy them to a folder with: {command_line(settings, 'export', batch_id, 'DIR')}")
    counters = services.simulator_counters()
    if counters is not None:
        made = counters["counters"].get("creates", 0)
        console.print(
            f"DashScope simulator: {made} upstream tasks created by this run, "
            f"{counters['duplicate_creates']} duplicate creates"
        )
    return 0 if summary.done and summary.succeeded == summary.total else 1
