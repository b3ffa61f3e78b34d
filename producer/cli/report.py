"""`genq report BATCH`: an HTML contact sheet of a batch, one card per job.

Each card shows the job's images as thumbnails (256 px JPEGs made from the stored results and embedded in the
page, so the page is one self-contained file that opens anywhere, about 15 KB per image), the prompt, the
prompt the service actually used, the seed, the status and, for a job that did not succeed, its error. Videos
get a card without a thumbnail. Everything taken from prompts and errors is HTML-escaped. The page is stored
in the bucket as `{batch}/report.html` and can be written to a local file too. `genq export` (and a local
`genq batch`) writes it beside the exported files, each thumbnail a link to its full-size file there.

A page holds at most `max_jobs` cards (2,000 by default, about 30 MB of thumbnails at one image each); the
header says when a batch has more, and `genq export` has every job.

A small script in the page counts the thumbnails that loaded ("12 of 12 images shown"), which is also what
the test reads back from a headless browser.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from workers.bucket import ResultBucket
from workers.errors import StorageError
from workers.job import Job, Status
from workers.jobstore import JobStore

THUMBNAIL_PX = 256
#: A stored image larger than this is not read for a thumbnail (the card says so instead).
THUMBNAIL_SOURCE_MAX_BYTES = 64 * 1024 * 1024

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
header { margin-bottom: 16px; } h1 { font-size: 20px; margin: 0 0 4px; } .meta { color: #666; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 12px; font-size: 13px; }
.card.bad { border-color: #d33; } .thumbs { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 8px; }
.thumbs img { width: 124px; height: auto; border-radius: 4px; background: #eee; }
.label { color: #888; } .status { font-weight: 600; } .error { color: #b00; }
"""

_SCRIPT = """
window.addEventListener('load', () => {
  const images = Array.from(document.querySelectorAll('img.thumb'));
  const shown = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesShown = String(shown);
  document.body.dataset.imagesTotal = String(images.length);
  document.getElementById('loaded').textContent = shown + ' of ' + images.length + ' images shown';
});
"""


@dataclass
class ReportSummary:
    jobs: int = 0
    images: int = 0
    missing: int = 0  # images that could not be read for a thumbnail


def thumbnail_data_uri(results: ResultBucket, key: str) -> str | None:
    """A 256 px JPEG of a stored image, as a data URI; None when it cannot be read."""
    try:
        response = results.client.get_object(results.bucket, key)
        try:
            raw = response.read(THUMBNAIL_SOURCE_MAX_BYTES + 1)
        finally:
            response.close()
            response.release_conn()
    except Exception:
        return None
    if len(raw) > THUMBNAIL_SOURCE_MAX_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _card(job: Job, results: ResultBucket, summary: ReportSummary, *, link_files: bool) -> str:
    e = html.escape
    thumbs = []
    for obj in job.objects:
        key = str(obj.get("key", ""))
        if not key.endswith(".png"):
            thumbs.append(f'<span class="label">video {e(key.rsplit("/", 1)[-1])}</span>')
            continue
        summary.images += 1
        uri = thumbnail_data_uri(results, key)
        if uri is None:
            summary.missing += 1
            thumbs.append(f'<span class="error">image {e(key)} could not be read</span>')
        elif link_files:  # beside the exported files: the thumbnail opens the full-size image
            relative = key.split("/", 1)[-1]
            thumbs.append(f'<a href="{e(relative)}"><img class="thumb" alt="{e(key)}" src="{uri}"></a>')
        else:
            thumbs.append(f'<img class="thumb" alt="{e(key)}" src="{uri}">')
    actual = next((r.get("actual_prompt") for r in job.results if r.get("actual_prompt")), None)
    seed = job.request.seed if job.request.seed is not None else "random"
    ok = job.status in (Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED)
    rows = [
        f'<div class="thumbs">{"".join(thumbs)}</div>',
        f'<div><span class="label">job</span> {e(job.job_id)} · line {job.line} · {e(job.request.model)}</div>',
        f'<div><span class="label">status</span> <span class="status">{e(job.status.value)}</span></div>',
        f'<div><span class="label">prompt</span> {e(job.request.prompt)}</div>',
    ]
    if actual and actual != job.request.prompt:
        rows.append(f'<div><span class="label">actual prompt</span> {e(str(actual))}</div>')
    rows.append(f'<div><span class="label">seed</span> {e(str(seed))}</div>')
    if job.error_code:
        rows.append(f'<div class="error">{e(job.error_code)}: {e(job.error_message or "")}</div>')
    return f'<div class="card{"" if ok else " bad"}">{"".join(rows)}</div>'


def render(
    store: JobStore,
    results: ResultBucket,
    batch_id: str,
    *,
    max_jobs: int = 2000,
    link_files: bool = False,
    billed_text: Callable[[dict[str, float]], str] | None = None,
) -> tuple[str, ReportSummary]:
    """The page, and what went into it. Jobs are read in source order, in chunks; at most `max_jobs`. With
    `link_files`, each thumbnail links to its image as `genq export` lays it out (`{job_id}/{index}.png`).
    `billed_text` words the batch's billed units (model -> units) for the header (with their cost)."""
    summary = ReportSummary()
    batch = store.batch_summary(batch_id)
    counts = ", ".join(f"{n} {s}" for s, n in sorted((batch.counts if batch else {}).items()))

    def cards() -> Iterator[str]:
        for job in store.jobs(batch_id):
            if summary.jobs >= max_jobs:
                return
            summary.jobs += 1
            yield _card(job, results, summary, link_files=link_files)

    body = "".join(cards())
    e = html.escape
    total = batch.total if batch else summary.jobs
    billed = batch.billed if batch else {}
    spent = billed_text(billed) if billed_text else ", ".join(f"{u:g} {m}" for m, u in sorted(billed.items()))
    shown = f"{summary.jobs} jobs" if summary.jobs >= total else f"the first {summary.jobs} of {total} jobs"
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>genq batch {e(batch_id)}</title>'
        f"<style>{_STYLE}</style></head><body><header><h1>batch {e(batch_id)}</h1>"
        f'<div class="meta">{shown}: {e(counts)} · <span id="loaded">{summary.images} images</span>'
        f'</div><div class="meta">billed by the service: <span id="billed">{e(spent or "nothing")}</span></div>'
        f'</header><div class="grid">{body}</div><script>{_SCRIPT}</script></body></html>'
    )
    return page, summary


def store_report(results: ResultBucket, batch_id: str, page: str) -> str:
    """Put the page in the bucket; returns its key."""
    key = f"{batch_id}/report.html"
    raw = page.encode()
    try:
        results.client.put_object(results.bucket, key, io.BytesIO(raw), len(raw), content_type="text/html")
    except Exception as exc:
        raise StorageError(f"could not store {key}: {exc}") from exc
    return key
