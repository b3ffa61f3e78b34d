"""Stage `finalize`: copy every result into the bucket, write the manifest, end the job.

Idempotent: an object already stored (found with its sha256) is not fetched again, so a second finalize
of the same job does no harm. S3 trouble is retried with backoff; a result we refuse (host, scheme, size,
bytes) is recorded against its index and never fetched.
"""

from __future__ import annotations

import time
from typing import Any

from config.catalogue import SEED_MAX, Kind
from workers import metrics
from workers.claimed import Claimed, backoff_s, claim, load_current, log
from workers.errors import ResultRejected, StorageError, TransientRemoteError
from workers.events import job_event
from workers.fetch import check_url, fetch
from workers.job import Action, Job, Next, Status
from workers.runtime import Runtime

#: A finalize not recorded within this long is re-sent by the sweep (its worker died). Overlapping a slow but
#: live one is harmless: objects already stored are skipped, and only the first end() wins its compare-and-set.
#: So the lease is sized to the usual download, not the worst one: a killed finalizer's job waits this long.
FINALIZE_LEASE_S = {Kind.IMAGE: 30.0, Kind.VIDEO: 120.0}
#: Failed attempts after which a result counts as at risk even while its URL still has time left.
AT_RISK_AFTER_ERRORS = 5
_EXPECTED = {Kind.IMAGE: ("png", {"image/png", "image/jpeg", "image/webp"}), Kind.VIDEO: ("mp4", {"video/mp4"})}


def object_key(ref: str, index: int, extension: str) -> str:
    return f"{ref}/{index}.{extension}"


def manifest_key(ref: str) -> str:
    return f"{ref}/manifest.json"


def finalize(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.FINALIZE)
    if job is None:
        return None
    claimed = claim(rt, job, Action.FINALIZE, lease_s=FINALIZE_LEASE_S[rt.settings.spec(job.request.model).kind])
    if claimed is None:
        return None
    try:
        objects, failures = _store_results(rt, job)
        if objects:
            rt.results.put_json(manifest_key(ref), _manifest(job, objects, failures))
    except (StorageError, TransientRemoteError) as exc:
        return _retry_later(claimed, exc)

    fields: dict[str, Any] = {"objects": objects, "failures": failures}
    if not objects:
        first = failures[0] if failures else {"code": "NoResults", "message": "no result to store"}
        claimed.end(Status.FAILED, code=first["code"], message=first["message"], fields=fields)
        return None
    status = Status.PARTIALLY_SUCCEEDED if failures else Status.SUCCEEDED
    claimed.end(status, fields=fields, objects=objects, manifest_key=manifest_key(ref))
    return None


def _retry_later(claimed: Claimed, exc: Exception) -> Next | None:
    """S3 (or the download) failed: retry with backoff until the result URLs die, alarming once when at risk."""
    rt, job, now = claimed.rt, claimed.job, claimed.now
    urls_die_at = (job.results_at or now) + rt.settings.result_url_life_s
    errors = job.finalize_errors + 1
    metrics.FINALIZE_FAILURES.inc()
    if now >= urls_die_at:
        message = f"results could not be stored before their URLs expired ({errors} attempts; last: {exc})"
        claimed.end(Status.FAILED, code="ResultExpired", message=message)
        return None
    at_risk = errors >= AT_RISK_AFTER_ERRORS or urls_die_at - now <= rt.settings.result_risk_margin_s
    if at_risk and not job.at_risk:
        alarm_result_at_risk(rt, job, urls_die_at, str(exc), now)
    delay = backoff_s(errors, base_s=2.0, cap_s=rt.settings.finalize_retry_cap_s, rng=rt.rng)
    delay = min(delay, max(1.0, urls_die_at - now))
    log.warning("finalize failed, will retry", ref=job.ref, error=str(exc), errors=errors, delay_s=round(delay, 1))
    return claimed.again(
        Status.DOWNLOADING, Action.FINALIZE, delay, fields={"finalize_errors": errors, "at_risk": at_risk}
    )


def alarm_result_at_risk(rt: Runtime, job: Job, urls_die_at: float, error: str, now: float) -> None:
    """A paid result may be lost: say so loudly in the log, as an event and in the metrics."""
    metrics.RESULTS_AT_RISK.inc()
    log.error(
        "result at risk: storing it keeps failing and its URL will expire",
        ref=job.ref,
        task_id=job.task_id,
        error=error,
        seconds_left=round(urls_die_at - now),
    )
    event = job_event(job, Status.DOWNLOADING, now=now, error_code="ResultAtRisk", error_message=error)
    event.update(id=f"{job.ref}/at-risk/{now}", type="genq.result.at_risk")
    event["data"]["urls_expire_at"] = urls_die_at
    rt.store.emit_event(event)


def _store_results(rt: Runtime, job: Job) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    extension, allowed_types = _EXPECTED[rt.settings.spec(job.request.model).kind]
    objects: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(job.results):
        url = item.get("url")
        if not url:
            failures.append(
                {
                    "index": index,
                    "code": item.get("code") or "NoResult",
                    "message": item.get("message") or "sub-result failed",
                }
            )
            continue
        key = object_key(job.ref, index, extension)
        try:
            check_url(url, allowed_hosts=rt.settings.result_hosts, require_https=rt.settings.require_https_results)
            existing = rt.results.sha256_of(key, task_id=result_origin(job))
            if existing:
                objects.append({"index": index, "key": key, "sha256": existing})
                continue
            started = time.monotonic()
            with fetch(rt.downloads, url, max_bytes=rt.settings.result_max_bytes) as fetched:
                if fetched.content_type not in allowed_types:
                    raise ResultRejected("ResultContentType", f"expected {extension} bytes, got {fetched.content_type}")
                rt.results.put_file(
                    key,
                    fetched.file,
                    fetched.size,
                    content_type=fetched.content_type,
                    sha256=fetched.sha256,
                    task_id=result_origin(job),
                )
                metrics.DOWNLOAD_BYTES.inc(fetched.size)
                metrics.DOWNLOAD_SECONDS.labels(account=job.account or "", model=job.request.model).observe(
                    time.monotonic() - started
                )
                objects.append(
                    {
                        "index": index,
                        "key": key,
                        "sha256": fetched.sha256,
                        "size": fetched.size,
                        "content_type": fetched.content_type,
                    }
                )
        except ResultRejected as exc:
            log.warning("result refused", ref=job.ref, index=index, code=exc.code, reason=exc.message)
            failures.append({"index": index, "code": exc.code, "message": exc.message})
    return objects, failures + _missing(job)


def result_origin(job: Job) -> str:
    """What made the results, as their objects record it: the task, or a synchronous model's call (its request
    id, else its count: a retried job's new call is not its last one, whose objects must not stand for it)."""
    if job.task_id:
        return job.task_id
    return f"call:{job.request_id or job.submits}" if job.submits else ""


def _missing(job: Job) -> list[dict[str, Any]]:
    """Images asked for that the answer does not list at all. The wan2.6 protocol reports a partial failure
    only by returning fewer `choices` than `n` (and billing only those), with no code per missing image."""
    asked, listed = job.request.n, len(job.results)
    message = f"the service returned {listed} of the {asked} images asked for, without a reason"
    return [{"index": index, "code": "ResultMissing", "message": message} for index in range(listed, asked)]


def _manifest(job: Job, objects: list[dict[str, Any]], failures: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ref": job.ref,
        "batch_id": job.batch_id,
        "job_id": job.job_id,
        "line": job.line,
        "model": job.request.model,
        "request": job.request.to_dict(),
        "seed": job.request.seed,
        "task_id": job.task_id,
        "actual_prompts": [r.get("actual_prompt") for r in job.results if r.get("url")],
        "upstream": job.upstream,
        "usage": job.usage,
        "objects": [{**o, "seed": image_seed(job, o["index"])} for o in objects],
        "failures": failures,
    }


def image_seed(job: Job, index: int) -> int | None:
    """The seed the service used for image `index` of a request with a seed: seed + index, one per image
    (003:967). None when it cannot be told: the request gave none (the service drew one and does not say which);
    the answer listed fewer images than asked (the wan2.6 protocol drops failed ones without saying which, so
    positions no longer match); or seed + index would pass the service's largest seed."""
    seed = job.request.seed
    if seed is None or len(job.results) < job.request.n or seed + index > SEED_MAX:
        return None
    return seed + index
