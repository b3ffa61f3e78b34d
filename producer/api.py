"""genq from Python: submit requests as a batch, wait for them, read their stored results, cancel, retry, and
read the batch's events, through the same paths as the command line (which uses this module).

    from producer.api import Genq

    with Genq.open(local=True) as genq:
        batch = genq.submit([{"prompt": "a lighthouse at dawn"}, {"prompt": "a red fox", "n": 2}])
        genq.wait(batch.batch_id, progress=True)
        for job in genq.jobs(batch.batch_id):
            print(job.job_id, job.status, [image.url for image in job.objects])

A request is a mapping or a `Request`, with the fields and validation of a CSV row (`docs/csv.md`): text,
integers and booleans are taken as a CSV cell would hold them, `None` leaves a field to its default, and a key
that is not a field is kept as metadata. A request that fails validation is not an exception: it comes back
in `Submitted.rejected` with its position, the field and the reason, is recorded with the batch (`genq status`
shows it), and the rest of the batch goes on. Only a call that cannot mean anything raises: `TypeError` for
requests that are not a sequence of them, `ValueError` for a bad batch id, priority, default, cap or URL life;
a service that cannot be used raises `ServiceMissing`.

Submitting is idempotent: a batch's jobs are named by their `id` (or a hash of the request), and the default
batch id is a hash of the requests, so running the same cell twice submits nothing twice.

`AsyncGenq` offers the same calls as coroutines (each runs in a thread; `wait` sleeps with asyncio).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config.celery_app import create_app
from config.settings import Settings, load_settings
from producer.batch import EnqueueReport, enqueue_rows
from producer.csv_source import CsvRow
from producer.services import ServiceMissing, Services, open_services
from workers import control, refs
from workers.admission import dispatch_all
from workers.billing import utc_day
from workers.bucket import ResultBucket, make_minio
from workers.job import TERMINAL, Job, Next, Status
from workers.jobstore import BatchSummary, JobStore
from workers.messages import publish
from workers.quota.quota import Quota
from workers.quota.spend import Cap, Ledger, batch_ledger, day_ledger
from workers.runtime import Runtime, build_runtime, make_quota, make_redis, make_store

__all__ = [
    "AsyncGenq",
    "Budget",
    "Genq",
    "JobResult",
    "Rejection",
    "Request",
    "ServiceMissing",
    "StoredObject",
    "Submitted",
]

#: How long a presigned URL lives unless asked otherwise, and the longest S3 allows (7 days).
URL_LIFE_S = 3600.0
URL_LIFE_MAX_S = 7 * 86400.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class Request:
    """One request, as a CSV row gives it (`docs/csv.md`); None leaves a field to its default."""

    prompt: str
    id: str | None = None
    model: str | None = None
    size: str | None = None
    n: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    duration: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def as_fields(self) -> dict[str, Any]:
        """The request as a mapping of CSV columns (metadata as columns of their own)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metadata"}
        return {**self.metadata, **values}


@dataclass(frozen=True)
class Rejection:
    """A request that was not accepted: its position in the submitted sequence (0-based), the field, the rule."""

    index: int
    field: str
    reason: str


@dataclass(frozen=True)
class Submitted:
    """What `submit` did: `accepted` jobs are new; `existing` counts, by status, those a submit of the same
    requests already made (nothing is sent for them again); `rejected` are the requests refused."""

    batch_id: str
    accepted: int
    images: int
    existing: dict[str, int]
    rejected: list[Rejection]


@dataclass(frozen=True)
class StoredObject:
    """A stored result: its key in the bucket, and a presigned URL to GET it until `url_expires_at` (epoch s)."""

    key: str
    url: str
    url_expires_at: float
    sha256: str
    size: int | None
    content_type: str | None


@dataclass(frozen=True)
class JobResult:
    """A job as it stands: its status, its stored objects (each with a presigned URL), its error, its bill."""

    ref: str
    job_id: str
    status: str
    model: str
    prompt: str
    objects: list[StoredObject]
    manifest_key: str | None
    error_code: str | None
    error_message: str | None
    billed_units: float

    @property
    def ended(self) -> bool:
        return Status(self.status) in TERMINAL


class Genq:
    """A client of genq's services: open it with `Genq.open` (or build it on services already open)."""

    def __init__(self, services: Services, *, runtime: Runtime | None = None) -> None:
        """A client on `services`; `runtime` (an embedding's own stores and quota, its `send` included) is
        built from the services' settings when not given."""
        self.settings: Settings = services.settings if runtime is None else runtime.settings
        self._runtime: Runtime | None = runtime
        self._owns_runtime = runtime is None
        self._building = threading.Lock()  # AsyncGenq's threads may ask at once: one of each is built
        self._connection: redis.Redis | None = None  # the client's own, until a runtime is built
        self._own: tuple[JobStore, Quota] | None = None
        self._results: ResultBucket | None = None
        self._celery: Any = None

    @classmethod
    @contextmanager
    def open(
        cls,
        *,
        local: bool | None = None,
        config: Path | str | None = None,
        settings: Settings | None = None,
        workers: int = 1,
        **overrides: Any,
    ) -> Iterator[Genq]:
        """A client for the block, from `settings`, else the config file and the environment (as `genq` reads
        them) with `overrides`. With `local` (or `local = true` configured), what does not answer is started
        for the block: Redis, S3, the DashScope simulator when no API key is set, and `workers` Celery workers
        when none is attached; in the production form nothing is started and a missing service raises
        `ServiceMissing` naming it."""
        if settings is None:
            given = {k: v for k, v in {"local": local, **overrides}.items() if v is not None}
            settings = load_settings(Path(config) if config else None, **given)
        elif local is not None:
            settings = settings.model_copy(update={"local": local})
        with open_services(settings, workers=workers, warn=_warn) as services, cls(services) as genq:
            yield genq

    def __enter__(self) -> Genq:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the connections this client opened (an embedding's own runtime is left to it)."""
        if self._connection is not None:
            self._connection.close()
            self._connection, self._own = None, None
        if self._runtime is not None and self._owns_runtime:
            self._runtime.close()
            self._runtime = None
        if self._results is not None:
            self._results.close()
            self._results = None
        if self._celery is not None:
            self._celery.close()
            self._celery = None

    # --- what is built once -------------------------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        with self._building:
            if self._runtime is None:
                self._runtime = build_runtime(self.settings)
                self._runtime.send = self._send
            return self._runtime

    @property
    def store(self) -> JobStore:
        """The job store: the runtime's once one is built (cancel and retry need one, and an API key for it),
        else one of the client's own, so that submitting and reading need only Redis."""
        return self._stores()[0]

    @property
    def quota(self) -> Quota:
        return self._stores()[1]

    def _stores(self) -> tuple[JobStore, Quota]:
        with self._building:
            if self._runtime is not None:
                return self._runtime.store, self._runtime.quota
            if self._own is None:
                self._connection = make_redis(self.settings)
                self._own = make_store(self.settings, self._connection), make_quota(self.settings, self._connection)
            return self._own

    @property
    def results(self) -> ResultBucket:
        with self._building:
            if self._results is None:
                self._results = ResultBucket(make_minio(self.settings), self.settings.bucket)
            return self._results

    def _send(self, step: Next | None) -> None:
        if self._runtime is not None and not self._owns_runtime:  # an embedding's runtime sends its own way
            self._runtime.send(step)
            return
        with self._building:
            if self._celery is None:
                self._celery = create_app(self.settings)
        publish(self._celery, step)

    # --- submitting ---------------------------------------------------------------------------------------
    def submit(
        self,
        requests: Iterable[Request | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        priority: int = 5,
        webhook: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        cap_units: float | None = None,
        cap_money: float | None = None,
    ) -> Submitted:
        """Enqueue `requests` as one batch with `priority` (0-9: a higher band is admitted first); `defaults`
        fill the fields a request leaves out; the batch's events also go to `webhook`, if given; `cap_units` /
        `cap_money` cap what the batch may be billed (`set_budget`). Returns at once: the jobs are admitted as
        the account's quota and the caps allow (`wait` follows them)."""
        if isinstance(requests, (str, bytes, Mapping, Request)):
            raise TypeError(
                f"requests must be a sequence of requests (mappings or Request), got one {type(requests).__name__}"
            )
        items = list(requests)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ValueError(f"priority must be an integer 0-9, got {priority!r}")
        rows = [_row(i, item) for i, item in enumerate(items)]
        batch_id = batch_id if batch_id is not None else _batch_id_of(rows)
        if not isinstance(batch_id, str) or not refs.is_id(batch_id):
            raise ValueError(f"batch id {batch_id!r} must be letters, digits, '.', '_' or '-' (at most 64)")
        cells = _default_cells(defaults or {})
        cap = checked_cap(cap_units, cap_money)
        report = self.submit_rows(
            rows, batch_id=batch_id, priority=priority, webhook=webhook, defaults=cells, cap=cap if cap.any else None
        )
        rejected = [Rejection(int(str(r["line"])) - 1, str(r["field"]), str(r["reason"])) for r in report.rejected]
        return Submitted(batch_id, report.accepted, report.images, dict(report.existing), rejected)

    def submit_rows(
        self,
        rows: Iterable[CsvRow],
        *,
        batch_id: str,
        source: str = "python",
        priority: int = 5,
        webhook: str | None = None,
        defaults: dict[str, str] | None = None,
        cap: Cap | None = None,
    ) -> EnqueueReport:
        """Enqueue rows (of a CSV file, or made by `submit`) as the batch `batch_id`: what `genq batch` and
        `submit` both do. `cap` (set before any job is admitted) caps what the batch may be billed."""
        if webhook:
            self.store.set_batch_webhook(batch_id, webhook)
        if cap is not None:
            self.quota.spend.set_cap(batch_ledger(batch_id), cap)
        return enqueue_rows(
            self.store,
            self.settings,
            batch_id,
            rows,
            source=source,
            send=self._send,
            quota=self.quota,
            priority=priority,
            defaults=defaults,
        )

    # --- following ----------------------------------------------------------------------------------------
    def status(self, batch_id: str) -> BatchSummary:
        """The batch's counters (by status, rejected, billed); `KeyError` for a batch that does not exist."""
        summary = self.store.batch_summary(batch_id)
        if summary is None:
            raise KeyError(f"no batch {batch_id!r}")
        return summary

    def wait(
        self,
        batch_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool | Callable[[BatchSummary], None] = False,
        interval_s: float = 0.5,
    ) -> BatchSummary:
        """Block until every job of the batch ended, or `timeout_s` passed, or the batch cannot go on by itself
        (`stalled` says why: a budget cap holds what is left); `BatchSummary.done` tells them apart. With
        `progress`, a progress bar on stderr, or your callable told each summary as it changes."""
        with _progress_of(batch_id, progress) as show:
            return _waited(
                lambda: self.status(batch_id), show, timeout_s, interval_s, time.sleep, lambda: self.stalled(batch_id)
            )

    def stalled(self, batch_id: str) -> str | None:
        """Why the batch cannot go on by itself, or None: no job of it is under way, and those not ended all
        wait for a budget cap (held by the batch's, or in line behind every account's cap for the day)."""
        summary = self.status(batch_id)
        waiting = summary.counts.get(Status.ACCEPTED.value, 0)
        if summary.done or not waiting or summary.total - summary.terminal > waiting:
            return None
        held = self.store.held(batch_id)
        if held >= waiting:
            if self.quota.spend.read(batch_ledger(batch_id)).no_price:
                return f"{held} job(s) held: their model has no price (`prices`), and the batch's cap is in money"
            return f"{held} job(s) held by the batch's budget cap: raise it (genq budget {batch_id} --cap N)"
        today, accounts = utc_day(time.time()), self.settings.resolved_accounts()
        if all(self.quota.spend.read(day_ledger(today, a.name)).reached for a in accounts):
            return f"{waiting} job(s) wait for the next UTC day: every account's daily budget cap is reached"
        return None

    def jobs(self, batch_id: str, *, url_life_s: float = URL_LIFE_S) -> Iterator[JobResult]:
        """The batch's jobs in source order, each stored object with a presigned URL that works for
        `url_life_s` seconds (1 s to 7 days; the bucket's objects themselves stay)."""
        if not 1 <= url_life_s <= URL_LIFE_MAX_S:
            raise ValueError(f"url_life_s must be 1 to {URL_LIFE_MAX_S:.0f} s, got {url_life_s!r}")
        self.status(batch_id)
        for job in self.store.jobs(batch_id):
            yield self._result(job, url_life_s)

    def _result(self, job: Job, url_life_s: float) -> JobResult:
        expires_at = time.time() + url_life_s
        life = timedelta(seconds=url_life_s)
        objects = [
            StoredObject(
                key=str(o["key"]),
                url=self.results.client.presigned_get_object(self.results.bucket, str(o["key"]), expires=life),
                url_expires_at=expires_at,
                sha256=str(o.get("sha256", "")),
                size=o.get("size"),
                content_type=o.get("content_type"),
            )
            for o in job.objects
        ]
        return JobResult(
            ref=job.ref,
            job_id=job.job_id,
            status=job.status.value,
            model=job.request.model,
            prompt=job.request.prompt,
            objects=objects,
            manifest_key=f"{job.ref}/manifest.json" if job.objects else None,
            error_code=job.error_code,
            error_message=job.error_message,
            billed_units=job.billed_units,
        )

    def events(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's events still in the event stream (each job's end, the batch's end; CloudEvents,
        `docs/events.md`), oldest first."""
        found: list[dict[str, Any]] = []
        after = "0"
        while True:
            page, cursor = self.store.read_events(after, limit=1000)
            found += [e for e in page if _of_batch(e, batch_id)]
            if cursor == after:
                return found
            after = cursor

    def budget(self, batch_id: str) -> Budget:
        """The batch's spending against its cap: committed (billed, plus the largest bills of its jobs under
        way), the cap, and how many of its jobs the cap holds back."""
        self.status(batch_id)
        return Budget(self.quota.spend.read(batch_ledger(batch_id)), self.store.held(batch_id))

    def day_budget(self, account: str, day: str | None = None) -> Ledger:
        """An account's spending for a UTC day (default: today) against its daily cap."""
        self.settings.account_settings(account)  # KeyError names the configured ones
        return self.quota.spend.read(day_ledger(day or utc_day(time.time()), account))

    # --- changing -----------------------------------------------------------------------------------------
    def set_budget(
        self,
        batch_id: str,
        *,
        cap_units: float | None = None,
        cap_money: float | None = None,
        remove: bool = False,
    ) -> Budget:
        """Set (raise or lower) the batch's cap in units (images, seconds of video) and/or in money (at the
        configured prices); a kind not given is left as it is, and `remove` takes both away. Jobs the cap held
        go back in line, and those that now fit are admitted; the next time the cap is reached is announced."""
        cap = checked_cap(cap_units, cap_money)
        if remove and cap.any:
            raise ValueError("remove takes the caps away: give it alone, or give cap_units / cap_money")
        self.status(batch_id)
        if remove:
            self.quota.spend.clear_cap(batch_ledger(batch_id))
        else:
            self.quota.spend.set_cap(batch_ledger(batch_id), cap)
        while self.store.unhold(batch_id, limit=1000):
            pass
        dispatch_all(self.store, self.quota, self.settings, self._send)
        return self.budget(batch_id)

    def cancel(self, target: str) -> control.ControlReport:
        """Cancel a batch, or one job (`BATCH/JOB`): tasks still queued upstream are cancelled there (nothing
        is billed for them); tasks already running end and are stored. The report names what was skipped."""
        return control.cancel(self.runtime, target)

    def retry(self, target: str, *, force: bool = False) -> control.ControlReport:
        """Run a batch's (or one job's) failed, timed-out or expired jobs again, except those whose error is
        permanent (moderation, bad parameters) unless `force`."""
        report, steps = control.retry(self.runtime, target, force=force)
        for step in steps:
            self._send(step)
        return report


class AsyncGenq:
    """`Genq` for asyncio: the same calls as coroutines (each runs in a worker thread; `wait` sleeps with
    asyncio). Open it with `AsyncGenq.open` (a plain context manager: starting services blocks)."""

    def __init__(self, genq: Genq) -> None:
        self.sync = genq

    @classmethod
    @contextmanager
    def open(cls, **options: Any) -> Iterator[AsyncGenq]:
        """As `Genq.open`."""
        with Genq.open(**options) as genq:
            yield cls(genq)

    async def _in_thread(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))

    async def submit(self, requests: Iterable[Request | Mapping[str, Any]], **options: Any) -> Submitted:
        return await self._in_thread(self.sync.submit, list(requests), **options)

    async def status(self, batch_id: str) -> BatchSummary:
        return await self._in_thread(self.sync.status, batch_id)

    async def wait(
        self,
        batch_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool | Callable[[BatchSummary], None] = False,
        interval_s: float = 0.5,
    ) -> BatchSummary:
        with _progress_of(batch_id, progress) as show:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                summary = await self.status(batch_id)
                show(summary)
                if _settled(summary, deadline) or await self._in_thread(self.sync.stalled, batch_id) is not None:
                    return summary
                await asyncio.sleep(interval_s)

    async def jobs(self, batch_id: str, *, url_life_s: float = URL_LIFE_S) -> list[JobResult]:
        return await self._in_thread(lambda: list(self.sync.jobs(batch_id, url_life_s=url_life_s)))

    async def events(self, batch_id: str) -> list[dict[str, Any]]:
        return await self._in_thread(self.sync.events, batch_id)

    async def budget(self, batch_id: str) -> Budget:
        return await self._in_thread(self.sync.budget, batch_id)

    async def set_budget(self, batch_id: str, **caps: Any) -> Budget:
        return await self._in_thread(self.sync.set_budget, batch_id, **caps)

    async def day_budget(self, account: str, day: str | None = None) -> Ledger:
        return await self._in_thread(self.sync.day_budget, account, day)

    async def stalled(self, batch_id: str) -> str | None:
        return await self._in_thread(self.sync.stalled, batch_id)

    async def cancel(self, target: str) -> control.ControlReport:
        return await self._in_thread(self.sync.cancel, target)

    async def retry(self, target: str, *, force: bool = False) -> control.ControlReport:
        return await self._in_thread(self.sync.retry, target, force=force)


@dataclass(frozen=True)
class Budget:
    """A batch's spending ledger and the jobs its cap holds back."""

    ledger: Ledger
    held: int


def checked_cap(units: float | None, money: float | None) -> Cap:
    """A cap from its figures; `ValueError` for one that is not a finite number, 0 or more."""
    for name, value in (("cap_units", units), ("cap_money", money)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number, 0 or more, got {value!r}")
    return Cap(None if units is None else float(units), None if money is None else float(money))


# --- requests as CSV rows -----------------------------------------------------------------------------------
def _cell(value: Any) -> tuple[str, str | None]:
    """A value as a CSV cell holds it, or the reason it cannot be one: (cell, reason)."""
    if value is None:
        return "", None
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, str):
        return (value, None) if _encodable(value) else ("", "is not valid text (it holds a lone surrogate)")
    if isinstance(value, float):
        return repr(value), None
    if isinstance(value, int):
        try:
            return str(value), None
        except ValueError:  # Python refuses to write an integer of more than 4,300 digits
            return "", "is an integer far too long to be a value"
    return "", f"must be text, a number or a boolean, got {type(value).__name__}"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _default_cells(defaults: Mapping[Any, Any]) -> dict[str, str]:
    """`defaults` as CSV cells; `ValueError` naming one that no cell could hold (the whole call is wrong)."""
    cells = {}
    for key, value in defaults.items():
        cell, wrong = _cell(value)
        if not isinstance(key, str) or wrong is not None:
            raise ValueError(f"defaults[{key!r}] {wrong or 'must be named by text'}")
        if value is not None:
            cells[key] = cell
    return cells


def _row(index: int, item: Any) -> CsvRow:
    """Request `index` as the CSV row it stands for (`line` is its position, from 1); a value no CSV cell
    could hold makes a row that validation rejects with that field and reason."""
    line = index + 1
    if isinstance(item, Request):
        clash = sorted(set(item.metadata) & {f.name for f in fields(Request)})
        if clash:
            return CsvRow(line, {}, problem=("metadata", f"keys {clash} are request fields: give them as fields"))
        item = item.as_fields()
    if not isinstance(item, Mapping):
        return CsvRow(line, {}, problem=("request", f"must be a mapping or a genq Request, got {type(item).__name__}"))
    cells: dict[str, str] = {}
    for key, value in item.items():
        if not isinstance(key, str) or not key.strip() or not _encodable(key):
            what = repr(key) if isinstance(key, str) else type(key).__name__
            return CsvRow(line, cells, problem=("request", f"field names must be text that is not blank, got {what}"))
        cell, wrong = _cell(value)
        if wrong is not None:
            return CsvRow(line, cells, problem=(key, wrong))
        cells[key] = cell
    return CsvRow(line, cells, size_bytes=sum(len(k.encode()) + len(v.encode()) for k, v in cells.items()))


def _batch_id_of(rows: list[CsvRow]) -> str:
    """A batch id named by what was submitted: the same requests make the same batch (submitted once)."""
    canonical = json.dumps([(row.fields, row.problem) for row in rows], sort_keys=True, ensure_ascii=False)
    return "py-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _of_batch(event: Mapping[str, Any], batch_id: str) -> bool:
    subject = str(event.get("subject", ""))
    return subject == batch_id or subject.startswith(batch_id + "/")


# --- waiting ------------------------------------------------------------------------------------------------
def _waited(
    read: Callable[[], BatchSummary],
    show: Callable[[BatchSummary], None],
    timeout_s: float | None,
    interval_s: float,
    sleep: Callable[[float], None],
    stalled: Callable[[], str | None],
) -> BatchSummary:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        summary = read()
        show(summary)
        if _settled(summary, deadline) or stalled() is not None:
            return summary
        sleep(interval_s)


def _settled(summary: BatchSummary, deadline: float | None) -> bool:
    """Whether waiting is over: every job ended, or the deadline (monotonic) passed."""
    return summary.done or (deadline is not None and time.monotonic() >= deadline)


@contextmanager
def _progress_of(
    batch_id: str, progress: bool | Callable[[BatchSummary], None]
) -> Iterator[Callable[[BatchSummary], None]]:
    """What to do with each summary while waiting: nothing, the caller's callable, or a progress bar."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda _: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
    ) as bar:
        task = bar.add_task(f"batch {batch_id}", total=None)

        def show(summary: BatchSummary) -> None:
            bar.update(task, total=max(summary.total, 1), completed=summary.terminal)

        yield show


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)
