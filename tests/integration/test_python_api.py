"""genq from Python (`producer/api.py`) against a real local stack and the simulator: submit, wait, download
through a presigned URL, cancel and retry through the API alone, and the README's Python example run as a user
would run it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ops.localstack import LocalStack
from producer.api import AsyncGenq, Genq, Rejection, Request

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
VIDEO = "wan2.5-t2v-preview"


def test_submit_wait_download_cancel_and_retry_through_the_api_alone(
    local_stack_factory: Callable[..., LocalStack], genq_for: Callable[[LocalStack], Genq]
) -> None:
    """Through `Genq` only: a batch of dicts and a `Request` (one bad) is accepted with the bad one returned as a
    rejection naming its field; waiting ends it; each image downloads through its presigned URL with the
    manifest's sha256; a job whose task failed (attempts capped at one) is retried and succeeds; videos that
    cannot all run are cancelled (the waiting ones) or named as running; the batch's events are its own; and
    the same submit again sends nothing."""
    stack = local_stack_factory(submit_max_attempts=1, simulator_profile="fast")
    genq = genq_for(stack)
    requests = [
        {"id": "fox", "prompt": "a red fox", "n": 2, "seed": 7},
        Request(prompt="a lighthouse", id="light", watermark=False),
        {"id": "bad", "prompt": "a dog", "n": 1.5},
        {"id": "flaky", "prompt": "a heron sim:task_failed:once"},
    ]
    batch = genq.submit(requests, batch_id="api", priority=7)
    assert (batch.accepted, batch.images) == (3, 4)
    assert batch.rejected == [Rejection(2, "n", batch.rejected[0].reason)] and "integer" in batch.rejected[0].reason
    summary = genq.wait("api", timeout_s=90)
    assert summary.done and summary.counts == {"succeeded": 2, "failed": 1}, summary
    assert summary.billed == {stack.settings.default_model: 3.0}

    results = {job.job_id: job for job in genq.jobs("api", url_life_s=120)}
    assert results["flaky"].status == "failed" and results["flaky"].error_code == "InternalError.Algo"
    for job in (results["fox"], results["light"]):
        assert job.ended and job.billed_units == len(job.objects)
        assert job.manifest_key == f"api/{job.job_id}/manifest.json"
        for stored in job.objects:
            got = httpx.get(stored.url, timeout=10)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == stored.sha256
    assert len(results["fox"].objects) == 2

    retried = genq.retry("api")
    assert retried.changed == ["api/flaky"] and not retried.skipped
    summary = genq.wait("api", timeout_s=90)
    assert summary.counts == {"succeeded": 3}
    again = genq.submit(requests, batch_id="api", priority=7)
    assert again.accepted == 0 and again.existing == {"succeeded": 3}

    # Videos run for minutes: with one slot, one runs and the rest wait; cancelling the batch cancels those.
    stack_limits = {"limits": {VIDEO: [1, 1]}}
    httpx.post(f"{stack.simulator_url}/_sim/config", json=stack_limits, timeout=10).raise_for_status()
    videos = genq.submit([{"prompt": f"a wave {i}", "model": VIDEO} for i in range(3)], batch_id="videos")
    assert videos.accepted == 3
    asyncio.run(_until_one_runs(genq))
    cancelled = genq.cancel("videos")
    assert len(cancelled.changed) >= 1 and len(cancelled.changed) + len(cancelled.skipped) == 3
    left = ("its task already runs upstream", "a create is in flight")  # never dropped: it runs, or may have
    assert all(why.startswith(left) for why in cancelled.skipped.values()), cancelled.skipped
    upstream = {
        t["task_id"]: t["status"] for t in httpx.get(f"{stack.simulator_url}/_sim/tasks", timeout=10).json()["tasks"]
    }
    for ref in cancelled.changed:  # a job ended by the cancel had no task that runs (and bills) upstream
        job = genq.store.get(ref)
        assert job is not None and job.status.value == "canceled"
        assert job.task_id is None or upstream[job.task_id] == "CANCELED", (ref, upstream.get(job.task_id or ""))

    events = genq.events("api")
    assert events and all(e["subject"] == "api" or e["subject"].startswith("api/") for e in events)
    assert sum(e["type"] == "genq.batch.finished" for e in events) == 2  # finished, revived, finished again


async def _until_one_runs(genq: Genq) -> None:
    """Wait (through the asyncio flavour) until a video's task is upstream."""
    client = AsyncGenq(genq)
    for _ in range(120):
        summary = await client.status("videos")
        if summary.counts.get("submitted", 0) + summary.counts.get("running", 0) >= 1:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"no video reached upstream: {summary.counts}")


def readme_python_example() -> str:
    """The README's Python example: the code block after the line that introduces it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, "the README has no Python example under <!-- python-example -->"
    return found.group(1)


def test_the_readme_python_example_runs_on_a_machine_with_nothing_running(tmp_path: Path) -> None:
    """The README's Python example, run as a script with the project's Python on a machine where nothing runs
    (the local form starts Redis, S3, the simulator and a worker for it): it exits 0 and prints each job's
    status and a presigned URL for each image, which downloads while the example's services run."""
    script = tmp_path / "example.py"
    script.write_text(readme_python_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "DASHSCOPE_"))}
    env.update(GENQ_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert any(line.startswith("fox succeeded") for line in lines), run.stdout
    assert len(re.findall(r"http://127\.0\.0\.1:\d+/\S+", run.stdout)) == 3, run.stdout
