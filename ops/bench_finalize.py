"""Benchmark: how much a worker's resident memory grows while finalizing one large video.

    python -m ops.bench_finalize [--size-mb 512]

Starts Redis, the S3 server and the simulator (as subprocesses, on free ports), makes the simulator serve
MP4 results of the given size, runs one video job through genq's own submit/poll/finalize stages in this
process, and samples this process's RSS every 10 ms while finalize runs. Side by side, in the same run, it
measures the naive way (download the body into memory, upload it from memory). It prints both growths and
their ratio. Target: genq's growth under 64 MB for 512 MB.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from ops.localstack import LocalStack, isolated_settings
from producer.batch import enqueue_rows
from producer.csv_source import CsvRow
from workers.bucket import ResultBucket
from workers.finalize import finalize
from workers.job import Action, Next, Status
from workers.poll import poll
from workers.runtime import Runtime, build_runtime
from workers.submit import submit

MB = 1024 * 1024


@contextmanager
def peak_rss_growth() -> Iterator[Callable[[], float]]:
    """Sample RSS every 10 ms; the yielded function returns the peak growth in MB so far."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: (peak[0] - baseline) / MB
    finally:
        stop.set()
        sampler.join()


def run_until_downloading(rt: Runtime, steps: list[Next]) -> Next:
    """Drive submit and poll until the job's finalize step is due; return that step."""
    stages = {Action.SUBMIT: submit, Action.POLL: poll}
    while steps:
        step = steps.pop()
        if step.action is Action.FINALIZE:
            return step
        time.sleep(min(step.delay_s, 0.5))
        follow = stages[step.action](rt, step.ref, step.attempt)
        if follow is not None:
            steps.append(follow)
    raise RuntimeError("the job ended before it had results to finalize")


def naive_copy(rt: Runtime, url: str, key: str) -> None:
    """What a hand-rolled task does: read the whole body, then upload it from memory."""
    body = httpx.get(url, timeout=300).content
    assert isinstance(rt.results, ResultBucket)
    rt.results.client.put_object(rt.settings.bucket, key, io.BytesIO(body), len(body), content_type="video/mp4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_finalize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=512)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as state,
        LocalStack(isolated_settings(Path(state), simulator_profile="fast")) as stack,
    ):
        assert stack.simulator_url is not None
        httpx.post(f"{stack.simulator_url}/_sim/config", json={"video_bytes": args.size_mb * MB})
        rt = build_runtime(stack.settings)
        rt.results.ensure_bucket()
        rows = [CsvRow(2, {"id": "video", "prompt": "waves", "model": "wan2.5-t2v-preview", "size": "1280*720"})]
        steps: list[Next] = []
        enqueue_rows(
            rt.store,
            rt.settings,
            "bench",
            rows,
            source="bench",
            send=lambda s: steps.append(s) if s else None,
            quota=rt.quota,
        )
        step = run_until_downloading(rt, steps)

        with peak_rss_growth() as genq_growth:
            started = time.monotonic()
            finalize(rt, step.ref, step.attempt)
            genq_s = time.monotonic() - started
        job = rt.store.get(step.ref)
        assert job is not None and job.status is Status.SUCCEEDED, job
        assert isinstance(rt.results, ResultBucket)
        stored = rt.results.client.stat_object(rt.settings.bucket, job.objects[0]["key"]).size or 0

        url = job.results[0]["url"]
        with peak_rss_growth() as naive_growth:
            started = time.monotonic()
            naive_copy(rt, url, "bench/naive.mp4")
            naive_s = time.monotonic() - started

    print(f"video size:                 {args.size_mb} MB (stored object: {stored / MB:.0f} MB)")
    print(f"genq finalize RSS growth:   {genq_growth():7.1f} MB   ({genq_s:.1f} s)")
    print(f"naive download RSS growth:  {naive_growth():7.1f} MB   ({naive_s:.1f} s)")
    print(f"ratio genq / naive:         {genq_growth() / max(naive_growth(), 0.1):7.3f}")
    print(f"target (< 64 MB):           {'met' if genq_growth() < 64 else 'NOT MET'}")
    return 0 if genq_growth() < 64 else 1


if __name__ == "__main__":
    raise SystemExit(main())
