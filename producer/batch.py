"""Turn rows into jobs: validate each against the catalogue, record the rejected ones, enqueue the rest.

Two passes over the stream: `check_rows` validates every row and sends nothing, so a file that turns out
unreadable half-way leaves no half-enqueued batch; `enqueue_rows` then records the rejected rows and creates
the jobs. A job's id is the row's `id` column when given, else a hash of the canonical request and how many
times the same request came before it in the file. Both are stable across runs of the same file, so running
a CSV twice finds every job already there and submits nothing twice.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from config.settings import Settings
from producer.csv_source import CsvRow
from workers import refs
from workers.admission import dispatch_all
from workers.billing import largest_bill
from workers.errors import RequestInvalid
from workers.job import Next, record_of
from workers.jobstore import JobStore, NewJob
from workers.quota.quota import Quota
from workers.requests import GenerationRequest, check_id, check_input_size, validate_request

#: Jobs created per round trip to Redis (each still its own atomic step).
CREATE_CHUNK = 500


@dataclass
class EnqueueReport:
    batch_id: str
    accepted: int = 0  # new jobs created by this run
    images: int = 0  # images the new jobs will make (sum of n)
    existing: Counter[str] = field(default_factory=Counter)  # status -> jobs that were already there
    rejected: list[dict[str, object]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.accepted + sum(self.existing.values()) + len(self.rejected)


class RowChecker:
    """Validates rows in file order and names their jobs; remembers ids (for duplicates) and how often each
    request came before (for hashed ids). Both passes over a file use one, so they agree row for row."""

    def __init__(self, settings: Settings, defaults: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.defaults = defaults or {}
        self.seen_requests: Counter[str] = Counter()
        self.first_line_of_id: dict[str, int] = {}

    def check(self, row: CsvRow) -> tuple[str, GenerationRequest]:
        """The row's job id and canonical request, or `RequestInvalid` naming the field and the rule."""
        if row.problem is not None:
            raise RequestInvalid(*row.problem)
        if row.extra_values:
            raise RequestInvalid(
                "row",
                f"has {row.extra_values} more value(s) than the header has columns (a stray comma or an unquoted "
                "field?)",
            )
        check_input_size("row", row.size_bytes)
        request = validate_request(
            row.to_input(self.defaults), catalogue=self.settings.catalogue, default_model=self.settings.default_model
        )
        if not row.client_id:
            fingerprint = request.fingerprint()
            self.seen_requests[fingerprint] += 1
            digest = hashlib.sha256(f"{fingerprint}:{self.seen_requests[fingerprint]}".encode()).hexdigest()
            return "r" + digest[:15], request
        check_id("id", row.client_id)
        if row.client_id in self.first_line_of_id:
            raise RequestInvalid(
                "id", f"duplicate id {row.client_id!r}, first used on line {self.first_line_of_id[row.client_id]}"
            )
        self.first_line_of_id[row.client_id] = row.line
        return row.client_id, request


@dataclass
class CheckReport:
    valid: int = 0
    images: int = 0
    rejected: list[dict[str, object]] = field(default_factory=list)
    jobs_by_model: Counter[str] = field(default_factory=Counter)
    units_by_model: Counter[str] = field(default_factory=Counter)  # what is billed: images, or video seconds

    def estimated_cost(self, prices: dict[str, float]) -> tuple[float, list[str]]:
        """The cost at `prices` (per image, or per second of video), and the models that have no price."""
        total = sum(units * prices[m] for m, units in self.units_by_model.items() if m in prices)
        return total, sorted(m for m in self.units_by_model if m not in prices)


def check_rows(settings: Settings, rows: Iterable[CsvRow], defaults: dict[str, str] | None = None) -> CheckReport:
    """First pass: validate every row and send nothing. A file that cannot be read fails here, before any job
    exists (`CsvFormatError` propagates). `defaults` fill the columns a row leaves empty."""
    checker, report = RowChecker(settings, defaults), CheckReport()
    for row in rows:
        try:
            _, request = checker.check(row)
        except RequestInvalid as exc:
            report.rejected.append({"line": row.line, "field": exc.field, "reason": exc.reason})
        else:
            report.valid += 1
            report.images += request.n
            report.jobs_by_model[request.model] += 1
            report.units_by_model[request.model] += int(largest_bill(request))
    return report


def enqueue_rows(
    store: JobStore,
    settings: Settings,
    batch_id: str,
    rows: Iterable[CsvRow],
    *,
    source: str,
    send: Callable[[Next | None], None],
    quota: Quota,
    priority: int = 5,
    defaults: dict[str, str] | None = None,
) -> EnqueueReport:
    """Second pass: record the rejected rows, create the valid ones (they wait in their model's queue), and
    admit what the free slots allow. Jobs are created in pipelined chunks; the first chunk is admitted at
    once, so work starts while the rest of a large file is read. The batch is sealed at the end."""
    report = EnqueueReport(batch_id)
    store.open_batch(batch_id, source=source, priority=priority)
    checker = RowChecker(settings, defaults)
    chunk: list[tuple[NewJob, int]] = []  # the job, and the images it makes

    def flush() -> None:
        created_before = report.accepted
        for (_, images), existing in zip(chunk, store.create_jobs([job for job, _ in chunk]), strict=True):
            if existing is not None:
                report.existing[existing] += 1
            else:
                report.accepted += 1
                report.images += images
        chunk.clear()
        if created_before == 0 and report.accepted:
            dispatch_all(store, quota, settings, send)

    for row in rows:
        try:
            job_id, request = checker.check(row)
        except RequestInvalid as exc:
            store.record_rejected(batch_id, row.line, exc.field, exc.reason, row.clipped_fields())
            report.rejected.append({"line": row.line, "field": exc.field, "reason": exc.reason})
            continue
        chunk.append((new_job(refs.job_ref(batch_id, job_id), row.line, request), request.n))
        if len(chunk) >= CREATE_CHUNK:
            flush()
    flush()
    store.seal_batch(batch_id)
    dispatch_all(store, quota, settings, send)
    return report


def new_job(ref: str, line: int, request: GenerationRequest) -> NewJob:
    """The record of a new job, waiting for a slot."""
    return NewJob(ref, line, request.model, record_of(ref, line, request, time.time()))
