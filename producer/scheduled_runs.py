"""Scheduled runs: at each tick of a schedule, every CSV in its source becomes one batch keyed by the date.

A schedule (`config/schedules.py`) names a source: a folder the workers can read, or `s3://bucket/prefix/` on
genq's S3 server. At a tick (`genq.scheduled_run`, fired by beat through redbeat, whose lock in Redis keeps a
second beat from firing it too), each `*.csv` there, in name order, is run as the batch
`{schedule}-{YYYYMMDD}-{file stem}-{hash}`, the date taken in `GENQ_SCHEDULE_TIMEZONE`; the hash is of the
input's whole path, so inputs whose stems slug alike (`b c.csv`, `b-c.csv`, one name under two prefixes, stems
past the id's 64 characters) never share a batch. A tick replayed the same day (a second delivery of the
message, a restarted beat, an operator re-running it) finds each batch already sealed and enqueues nothing;
files added later that day are picked up by the next tick. Each batch emits `genq.batch.finished` when its
last job ends; the run's report (the inputs, their batches, what was accepted and rejected, and why an input
did not run) is stored as `reports/{schedule}/{YYYYMMDD}.json` in the results bucket.

Each input is checked as a whole before any of it is enqueued, exactly as `genq batch` does it: an
unreadable file (not UTF-8, no header, a runaway field) opens no batch and is reported with its reason; the
other inputs still run. Whatever goes wrong with one input is that input's note in the report, never the end
of the tick.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from config.celery_app import app
from config.schedules import ScheduleSettings
from config.settings import Settings
from producer.batch import check_rows, enqueue_rows
from producer.csv_source import CsvFormatError, read_rows
from workers.bucket import Bucket
from workers.errors import StorageError
from workers.job import Next
from workers.jobstore import JobStore
from workers.messages import publish
from workers.quota.quota import Quota
from workers.runtime import runtime

log = structlog.get_logger("genq.schedule")


@dataclass
class InputRun:
    source: str
    batch_id: str
    accepted: int = 0
    already_known: int = 0
    rejected: int = 0
    skipped: str = ""  # why nothing was enqueued (already run today, unreadable file)


def schedule_named(settings: Settings, name: str) -> ScheduleSettings:
    for schedule in settings.schedules:
        if schedule.name == name:
            return schedule
    raise KeyError(f"no schedule {name!r}; configured: {', '.join(s.name for s in settings.schedules) or 'none'}")


def run_date(settings: Settings, now: float) -> str:
    return datetime.fromtimestamp(now, ZoneInfo(settings.schedule_timezone)).strftime("%Y%m%d")


#: Hex digits of the input's path in its batch id: distinct inputs of a day never share a batch.
SOURCE_HASH_CHARS = 10


def batch_id_for(schedule: str, date: str, source: str) -> str:
    """`{schedule}-{date}-{stem}-{hash of the whole source}`, at most 64 characters, a valid batch id."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:SOURCE_HASH_CHARS]
    prefix = f"{schedule}-{date}-"
    room = 64 - len(prefix) - len(digest) - 1
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem, flags=re.ASCII).strip("-._")[:room].strip("-._")
    return f"{prefix}{stem or 'input'}-{digest}"


#: How a tick gets one input: copy it to the local path given (a bucket object is downloaded).
Fetch = Callable[[Path], object]


def _inputs(source: str, results: Bucket) -> list[tuple[str, Fetch]]:
    """The source's CSV files in name order, each with how to fetch a private copy of it. Nothing is read yet:
    an input that cannot be fetched is that input's failure, not the tick's."""
    if not source.startswith("s3://"):

        def copier(path: Path) -> Fetch:
            return lambda local: shutil.copyfile(path, local)

        return [(str(p), copier(p)) for p in sorted(Path(source).glob("*.csv"))]
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    store = results.other(bucket)

    def downloader(key: str) -> Fetch:
        return lambda local: store.download(key, str(local))

    return [
        (f"s3://{bucket}/{key}", downloader(key)) for key in sorted(k for k in store.keys(prefix) if k.endswith(".csv"))
    ]


def scheduled_run(
    store: JobStore,
    quota: Quota,
    results: Bucket,
    settings: Settings,
    name: str,
    send: Callable[[Next | None], None],
    *,
    now: float | None = None,
) -> list[InputRun]:
    """Run every input of schedule `name` for today's date; inputs already run today are skipped. Each input
    is fetched as a private copy, checked, then enqueued; whatever fails is that input's note in the report."""
    schedule = schedule_named(settings, name)
    now = time.time() if now is None else now
    date = run_date(settings, now)
    configured = settings.model_copy(update={"default_model": schedule.model or settings.default_model})
    runs: list[InputRun] = []
    try:
        inputs = _inputs(schedule.source, results)
    except Exception as exc:  # the source itself cannot be listed: the day's report says so
        log.exception("scheduled source unreadable", schedule=name, source=schedule.source)
        inputs, runs = [], [InputRun(schedule.source, "", skipped=f"source unreadable: {type(exc).__name__}: {exc}")]
    with tempfile.TemporaryDirectory(prefix="genq-schedule-") as tmp:
        for index, (source, fetch) in enumerate(inputs):
            run = InputRun(source, batch_id_for(name, date, source))
            local = Path(tmp) / f"{index}.csv"
            try:
                _run_input(
                    store, quota, configured, run, fetch, local, f"schedule {name}: {source}", send, schedule.priority
                )
            except CsvFormatError as exc:
                run.skipped = str(exc)
                log.error("scheduled input unreadable", schedule=name, source=source, reason=str(exc))
            except Exception as exc:  # one input's trouble is its note in the report, not the end of the tick
                run.skipped = f"InternalError: {type(exc).__name__}: {str(exc)[:300]}"
                log.exception("scheduled input failed", schedule=name, source=source)
            finally:
                local.unlink(missing_ok=True)
            runs.append(run)
    log.info("scheduled run", schedule=name, date=date, inputs=len(runs), accepted=sum(r.accepted for r in runs))
    _store_report(results, name, date, now, runs)
    return runs


def _store_report(results: Bucket, name: str, date: str, now: float, runs: list[InputRun]) -> None:
    """The day's report, merged with what earlier ticks of the day recorded: an input a later tick found
    already run keeps its first tick's figures, and inputs a later tick no longer sees keep their notes."""
    key = f"reports/{name}/{date}.json"
    try:
        earlier = results.get_json(key) or {}
        merged: dict[str, dict[str, object]] = {}
        for entry in earlier.get("inputs", []):
            if isinstance(entry, dict) and isinstance(entry.get("source"), str):
                merged[entry["source"]] = entry
        for run in runs:
            if not (run.skipped == "already run today" and run.source in merged):
                merged[run.source] = asdict(run)
        report = {"schedule": name, "date": date, "ran_at": earlier.get("ran_at", now), "inputs": list(merged.values())}
        results.put_json(key, report)
    except StorageError as exc:  # the batches are enqueued either way; the report is a convenience
        log.error("scheduled run report not stored", schedule=name, error=str(exc))


def _run_input(
    store: JobStore,
    quota: Quota,
    settings: Settings,
    run: InputRun,
    fetch: Fetch,
    local: Path,
    source: str,
    send: Callable[[Next | None], None],
    priority: int,
) -> None:
    """Fetch the input, check it as a whole, then enqueue it, unless its batch already ran today."""
    summary = store.batch_summary(run.batch_id)
    if summary is not None and summary.sealed:
        run.already_known, run.skipped = summary.total, "already run today"
        return
    fetch(local)  # a private copy: both passes read the same bytes, whatever happens to the source meanwhile
    check_rows(settings, read_rows(local, name=run.source))  # an unreadable file fails here, before its batch
    rows = read_rows(local, name=run.source)
    report = enqueue_rows(store, settings, run.batch_id, rows, source=source, send=send, quota=quota, priority=priority)
    run.accepted, run.rejected = report.accepted, len(report.rejected)
    run.already_known = sum(report.existing.values())


@app.task(name="genq.scheduled_run")
def scheduled_run_task(name: str) -> None:
    """One tick of schedule `name` (beat fires it; running it again the same day enqueues nothing twice)."""
    rt = runtime()
    scheduled_run(rt.store, rt.quota, rt.results, rt.settings, name, lambda step: publish(app, step))
