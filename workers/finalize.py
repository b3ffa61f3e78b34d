"""Stage `finalize`: copy every result into the bucket, write the manifest, end the job.

Idempotent: an object already stored (found with its sha256) is not fetched again, so a second finalize
of the same job does no harm. S3 trouble is retried with backoff; a result we refuse (host, scheme, size,
bytes) is recorded against its index and never fetched.
"""

from __future__ import annotations

from typing import Any

from config.catalogue import Kind, model_spec
from workers.errors import ResultRejected, StorageError, TransientRemoteError
from workers.fetch import check_url, fetch
from workers.job import Action, Job, Status
from workers.runtime import Runtime
from workers.steps import Next, backoff_s, claim, end, load_current, log, reschedule

FINALIZE_LEASE_S = 900.0
FINALIZE_MAX_ERRORS = 12
_EXPECTED = {Kind.IMAGE: ("png", {"image/png", "image/jpeg", "image/webp"}), Kind.VIDEO: ("mp4", {"video/mp4"})}


def object_key(ref: str, index: int, extension: str) -> str:
    return f"{ref}/{index}.{extension}"


def manifest_key(ref: str) -> str:
    return f"{ref}/manifest.json"


def finalize(rt: Runtime, ref: str, attempt: int) -> Next | None:
    job = load_current(rt, ref, attempt, Action.FINALIZE)
    if job is None:
        return None
    current = claim(rt, job, Action.FINALIZE, lease_s=FINALIZE_LEASE_S)
    if current is None:
        return None
    try:
        objects, failures = _store_results(rt, job)
        if objects:
            rt.results.put_json(manifest_key(ref), _manifest(job, objects, failures))
    except (StorageError, TransientRemoteError) as exc:
        errors = job.finalize_errors + 1
        if errors >= FINALIZE_MAX_ERRORS:
            end(rt, job, current, Status.FAILED, code="FinalizeFailed", message=f"{exc} ({errors} attempts)")
            return None
        delay = backoff_s(errors, base_s=2.0, cap_s=120.0, rng=rt.rng)
        log.warning("finalize failed, will retry", ref=ref, error=str(exc), errors=errors, delay_s=round(delay, 1))
        return reschedule(
            rt, job, current, Status.DOWNLOADING, Action.FINALIZE, delay, fields={"finalize_errors": errors}
        )

    fields: dict[str, Any] = {"objects": objects, "failures": failures}
    if not objects:
        first = failures[0] if failures else {"code": "NoResults", "message": "no result to store"}
        end(rt, job, current, Status.FAILED, code=first["code"], message=first["message"], fields=fields)
        return None
    status = Status.PARTIALLY_SUCCEEDED if failures else Status.SUCCEEDED
    end(rt, job, current, status, fields=fields, objects=objects, manifest_key=manifest_key(ref))
    return None


def _store_results(rt: Runtime, job: Job) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    extension, allowed_types = _EXPECTED[model_spec(job.request.model).kind]
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
            existing = rt.results.sha256_of(key)
            if existing:
                objects.append({"index": index, "key": key, "sha256": existing})
                continue
            with fetch(rt.downloads, url, max_bytes=rt.settings.result_max_bytes) as fetched:
                if fetched.content_type not in allowed_types:
                    raise ResultRejected("ResultContentType", f"expected {extension} bytes, got {fetched.content_type}")
                rt.results.put_file(
                    key, fetched.file, fetched.size, content_type=fetched.content_type, sha256=fetched.sha256
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
    return objects, failures


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
        "objects": objects,
        "failures": failures,
    }
