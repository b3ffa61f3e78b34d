"""Turn rows into jobs: validate each against the catalogue, record the rejected ones, enqueue the rest.

A job's id is the row's `id` column when given, else a hash of the canonical request and how many times
the same request came before it in the batch. Both are stable across runs of the same file, so running a
CSV twice finds every job already there and submits nothing twice.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from config.settings import Settings
from producer.csv_source import CsvRow
from workers import keys
from workers.admission import admit
from workers.errors import RequestInvalid
from workers.job import Action, Status
from workers.requests import GenerationRequest, validate_request
from workers.steps import Next
from workers.store import JobStore


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


def job_id_for(row: CsvRow, request: GenerationRequest, seen: Counter[str]) -> str:
    if row.client_id:
        if not keys.ID_PATTERN.match(row.client_id):
            raise RequestInvalid(
                "id",
                "must be 1-64 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {row.client_id!r}",
            )
        return row.client_id
    fingerprint = request.fingerprint()
    seen[fingerprint] += 1
    return "r" + hashlib.sha256(f"{fingerprint}:{seen[fingerprint]}".encode()).hexdigest()[:15]


def enqueue_rows(
    store: JobStore,
    settings: Settings,
    batch_id: str,
    rows: Iterable[CsvRow],
    *,
    source: str,
    send: Callable[[Next | None], None],
    on_row: Callable[[EnqueueReport], None] | None = None,
) -> EnqueueReport:
    """Validate and enqueue every row; return what happened. The batch is sealed at the end."""
    report = EnqueueReport(batch_id)
    store.open_batch(batch_id, source=source)
    seen_requests: Counter[str] = Counter()
    first_line_of_id: dict[str, int] = {}
    for row in rows:
        try:
            if "_extra_values" in row.fields:
                raise RequestInvalid(
                    "row", "has more values than the header has columns (a stray comma or an unquoted field?)"
                )
            request = validate_request(row.to_input(), default_model=settings.default_model)
            job_id = job_id_for(row, request, seen_requests)
            if row.client_id:
                if row.client_id in first_line_of_id:
                    raise RequestInvalid(
                        "id", f"duplicate id {row.client_id!r}, first used on line {first_line_of_id[row.client_id]}"
                    )
                first_line_of_id[row.client_id] = row.line
        except RequestInvalid as exc:
            store.record_rejected(batch_id, row.line, exc.field, exc.reason, row.fields)
            report.rejected.append({"line": row.line, "field": exc.field, "reason": exc.reason})
        else:
            _create(store, settings, report, keys.job_ref(batch_id, job_id), row.line, request, send)
        if on_row:
            on_row(report)
    store.seal_batch(batch_id)
    return report


def _create(
    store: JobStore,
    settings: Settings,
    report: EnqueueReport,
    ref: str,
    line: int,
    request: GenerationRequest,
    send: Callable[[Next | None], None],
) -> None:
    now = time.time()
    batch_id, job_id = keys.split_ref(ref)
    existing = store.create_job(
        ref,
        line=line,
        due_at=now,
        fields={
            "batch_id": batch_id,
            "job_id": job_id,
            "line": line,
            "request": request.to_dict(),
            "model": request.model,
            "status": Status.ACCEPTED,
            "attempt": 0,
            "next_action": Action.ADMIT,
            "due_at": now,
            "created_at": now,
            f"t_{Status.ACCEPTED}": now,
        },
    )
    if existing is not None:
        report.existing[existing] += 1
        return
    report.accepted += 1
    report.images += request.n
    send(admit(store, settings, ref, now=now))
