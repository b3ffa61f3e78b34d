"""`genq export`: copy a batch's objects, a results CSV and the contact sheet (`report.html`, its thumbnails
linked to the copied files) into a local folder.

The results CSV is safe to open in a spreadsheet: a cell that starts with `=`, `+`, `-`, `@`, tab or CR is
prefixed with `'`, so a prompt cannot become a formula.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from producer.cli.report import render
from workers.bucket import ResultBucket
from workers.job import Job
from workers.jobstore import JobStore

COLUMNS = (
    "line",
    "job_id",
    "status",
    "model",
    "prompt",
    "actual_prompt",
    "seed",
    "size",
    "n",
    "task_id",
    "files",
    "error_code",
    "error_message",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


@dataclass
class ExportReport:
    jobs: int = 0
    files: int = 0
    csv_path: Path | None = None
    sheet_path: Path | None = None  # the contact sheet, absolute


def _row(job: Job, files: list[str]) -> dict[str, str]:
    actual = next((r.get("actual_prompt") for r in job.results if r.get("actual_prompt")), "")
    values: dict[str, object] = {
        "line": job.line,
        "job_id": job.job_id,
        "status": job.status.value,
        "model": job.request.model,
        "prompt": job.request.prompt,
        "actual_prompt": actual,
        "seed": job.request.seed,
        "size": job.request.size,
        "n": job.request.n,
        "task_id": job.task_id,
        "files": " ".join(files),
        "error_code": job.error_code,
        "error_message": job.error_message,
    }
    return {k: spreadsheet_safe(v) for k, v in values.items()}


def export_batch(
    store: JobStore,
    results: ResultBucket,
    batch_id: str,
    out_dir: Path,
    *,
    billed_text: Callable[[dict[str, float]], str] | None = None,
) -> ExportReport:
    """Download every stored object of the batch under `out_dir/{job_id}/`, and write `results.csv` and the
    contact sheet `report.html`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(csv_path=out_dir / "results.csv")
    with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for job in store.jobs(batch_id):
            files = []
            for obj in job.objects:
                relative = Path(obj["key"]).relative_to(batch_id)
                results.download(obj["key"], str(out_dir / relative))
                files.append(str(relative))
            manifest = f"{job.ref}/manifest.json"
            if job.objects:
                results.download(manifest, str(out_dir / job.job_id / "manifest.json"))
            writer.writerow(_row(job, files))
            report.jobs += 1
            report.files += len(files)
    page, _ = render(store, results, batch_id, link_files=True, billed_text=billed_text)
    report.sheet_path = (out_dir / "report.html").resolve()  # printed whole: a new user opens it from anywhere
    report.sheet_path.write_text(page, encoding="utf-8")
    return report
