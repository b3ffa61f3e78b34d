"""CloudEvents 1.0 for terminal jobs. The store appends them atomically with the terminal transition.

A job event's `id` is `{ref}/{status}`: a consumer that sees the same id twice has seen the same event.
Batch events (`genq.batch.finished`) are built in Lua beside the batch counters
(`workers/jobstore/lua/finish_batch.lua`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from workers.job import Job, Status

SOURCE = "genq"


def job_event(
    job: Job,
    status: Status,
    *,
    now: float,
    error_code: str | None = None,
    error_message: str | None = None,
    objects: list[dict[str, Any]] | None = None,
    manifest_key: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ref": job.ref,
        "batch_id": job.batch_id,
        "job_id": job.job_id,
        "status": status.value,
        "model": job.request.model,
        "task_id": job.task_id,
        "line": job.line,
        "billed_units": job.billed_units,
    }
    if error_code:
        data["error"] = {"code": error_code, "message": error_message or ""}
    if objects is not None:
        data["objects"] = objects
    if manifest_key:
        data["manifest"] = manifest_key
    return cloud_event(f"genq.job.{status.value}", job.ref, f"{job.ref}/{status.value}/{job.attempt}", data, now=now)


def iso_time(ts: float) -> str:
    """An epoch time as CloudEvents writes it: UTC, milliseconds, `Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloud_event(event_type: str, subject: str, event_id: str, data: dict[str, Any], *, now: float) -> dict[str, Any]:
    """Every genq event's envelope (CloudEvents 1.0, structured JSON; docs/events.schema.json)."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "subject": subject,
        "time": iso_time(now),
        "datacontenttype": "application/json",
        "data": data,
    }
