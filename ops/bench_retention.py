"""Benchmark: Redis memory per job, before and after the retention purge, and per day of a given load.

    python -m ops.bench_retention                       # 20,000 jobs; a load of 100,000 jobs a day
    python -m ops.bench_retention --jobs 50000 --per-day 250000 --retention-days 7

Starts a Redis (Valkey, AOF on, `noeviction`) on a free port as the tests do (`ops.localstack`), and takes N jobs
of one sealed batch through the job store as the stages do: created (waiting for a slot), admitted, submitting,
submitted (a task id, the create's request id, the task's owner), running (the service's timestamps), downloading
(one image: a presigned result URL of the service's length, the prompt and the 400-character prompt the service's
prompt extension writes), succeeded (the stored object with its sha256, and the job's CloudEvent). It reads the
server's `used_memory` (INFO memory, what `maxmemory` is compared with) after each phase, and the event stream's
own size (MEMORY USAGE) apart, since the stream is capped by `event_stream_maxlen` whatever the retention. Then it
purges with the clock moved past the retention, as beat's `genq.purge` would, and reads again.

Prints bytes per waiting job, per finished job (record, task owner, its place in the batch and in the finished
index), per event, what is left per job after the purge, the purge's speed, and Redis memory for the given load:
what a day adds without retention, and the steady state with it.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from config.logging import configure_logging
from config.settings import Settings
from workers.events import job_event
from workers.job import Action, Status, record_of
from workers.jobstore import JobStore, NewJob
from workers.refs import job_ref
from workers.requests import GenerationRequest
from workers.retention import PURGE_RUN_BUDGET, purge_finished
from workers.runtime import make_redis, make_store

MODEL = "wan2.5-t2i-preview"
CHUNK = 500
#: Prompt sizes of the jobs (characters): what a user writes, and what the service's prompt extension returns.
PROMPT_CHARS, ACTUAL_PROMPT_CHARS = 120, 400


def prompt(i: int, chars: int) -> str:
    text = f"job {i}: a harbour at dawn, fishing boats, soft mist over the water, oil painting, warm light. "
    return (text * (chars // len(text) + 1))[:chars]


def result_url(task_id: str) -> str:
    """A presigned OSS URL of the service's shape and length (dashscope-api.md, "Responses")."""
    return (
        f"https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/1d/{task_id[:2]}/20261202/{task_id[:8]}/"
        f"{task_id}-1.png?Expires=1796306492&OSSAccessKeyId=LTAI5tPxmD2kqW9cJ7nRz4Ub"
        f"&Signature={secrets.token_urlsafe(21)}%3D"
    )


Move = tuple[bool, Status, Action, dict[str, Any]]  # (a claim, else a transition), status, next action, fields


def moves(ref: str, i: int, task_id: str, now: float) -> list[Move]:
    """What the stages write on the way from waiting to downloaded: admission, the create, polls, the results."""
    upstream = {"submit_time": "2026-12-02 22:01:31.167", "scheduled_time": "2026-12-02 22:01:31.167"}
    result = {"url": result_url(task_id), "orig_prompt": prompt(i, PROMPT_CHARS)}
    result["actual_prompt"] = prompt(i, ACTUAL_PROMPT_CHARS)
    submitted = {"task_id": task_id, "request_id": str(uuid.uuid4()), "submitted_at": now, "submits": 1}
    return [
        (True, Status.ADMITTED, Action.SUBMIT, {"account": "default", "deadline_at": now + 600}),
        (True, Status.SUBMITTING, Action.SUBMIT, {"submit_sent_at": now, "create_pending": True}),
        (False, Status.SUBMITTED, Action.POLL, {**submitted, "create_pending": False, "submit_failed_at": None}),
        (True, Status.SUBMITTED, Action.POLL, {"poll_count": 1}),
        (
            False,
            Status.RUNNING,
            Action.POLL,
            {**upstream, "task_status": "RUNNING", "poll_delay_s": 3.1077993230158354},
        ),
        (True, Status.RUNNING, Action.POLL, {"poll_count": 5, "unknown_seen": 0}),
        (
            False,
            Status.DOWNLOADING,
            Action.FINALIZE,
            {"task_status": "SUCCEEDED", "end_time": "2026-12-02 22:01:42.023", "results": [result]},
        ),
        (True, Status.DOWNLOADING, Action.FINALIZE, {"results_at": now + 11, "usage": {"image_count": 1}}),
    ]


def finish(store: JobStore, ref: str, i: int, now: float) -> None:
    """Take one waiting job to `succeeded` through the moves and fields the stages write, its task owned, its event
    appended with the end."""
    task_id, attempt = str(uuid.uuid4()), 0
    assert store.leave_queue(MODEL, ref)  # admission takes it out of line, then claims it
    for claim, status, action, fields in moves(ref, i, task_id, now):
        if claim:
            applied = store.claim(
                ref, status, expected_attempt=attempt, action=action, lease_until=now + 15, fields=fields
            )
        else:
            applied = store.transition(
                ref, status, expected_attempt=attempt, next_action=action, due_at=now + 3, fields=fields
            )
        assert applied.ok, (ref, status, applied.reason)
        attempt = applied.attempt
    store.own_task(task_id, ref)
    stored = {"index": 0, "key": f"{ref}/0.png", "sha256": secrets.token_hex(32), "size": 1_843_217}
    objects = [{**stored, "content_type": "image/png"}]
    job = store.get(ref)
    assert job is not None
    event = job_event(job, Status.SUCCEEDED, now=now + 12, objects=objects, manifest_key=f"{ref}/manifest.json")
    done = {"objects": objects, "failures": []}
    assert store.transition(ref, Status.SUCCEEDED, expected_attempt=attempt, fields=done, event=event, now=now + 12).ok


def run_batch(store: JobStore, batch_id: str, jobs: int, now: float) -> list[str]:
    """A sealed batch of `jobs` jobs, all waiting for a slot; their refs."""
    store.open_batch(batch_id, source=f"{batch_id}.csv", now=now)
    refs = [job_ref(batch_id, f"row{i}") for i in range(jobs)]
    for start in range(0, jobs, CHUNK):
        new = [
            NewJob(
                ref,
                i + 2,
                MODEL,
                record_of(ref, i + 2, GenerationRequest(model=MODEL, prompt=prompt(i, PROMPT_CHARS)), now),
            )
            for i, ref in enumerate(refs[start : start + CHUNK], start)
        ]
        store.create_jobs(new)
    store.seal_batch(batch_id, now=now)
    return refs


class Memory:
    """The server's memory, read with a client of the benchmark's own (INFO memory and MEMORY USAGE only)."""

    def __init__(self, client: redis.Redis, event_stream: str) -> None:
        self.client, self.event_stream = client, event_stream

    def read(self) -> tuple[int, int]:
        """(used_memory, the event stream's bytes), once lazy frees have settled."""
        for _ in range(100):
            info: dict[str, Any] = self.client.info("memory")
            if not int(info.get("lazyfree_pending_objects", 0)):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        info = self.client.info("memory")
        stream = self.client.memory_usage(self.event_stream, samples=0) or 0
        return int(info["used_memory"]), int(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_retention", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs taken through the store (default 20,000)")
    parser.add_argument("--per-day", type=int, default=100_000, help="the load to size for, jobs a day")
    parser.add_argument("--retention-days", type=float, default=None, help="default: GENQ_RETENTION_S's default")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # stdout is the benchmark's table
    from ops.localstack import services
    from ops.localstack.process import free_port

    with tempfile.TemporaryDirectory(prefix="genq-bench-retention-") as tmp:
        root, port = Path(tmp), free_port()
        redis_process = services.start_redis(root / "redis", port, root / "logs")
        try:
            retention_s = args.retention_days * 86400 if args.retention_days else Settings().retention_s
            settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", retention_s=retention_s)
            figures = measure(settings, args.jobs)
        finally:
            redis_process.stop()
    report(settings, figures, args.jobs, args.per_day)
    return 0


def measure(settings: Settings, jobs: int) -> dict[str, float]:
    client = make_redis(settings)
    store = make_store(settings, client)
    memory = Memory(client, settings.event_stream)
    now = time.time()
    for ref in run_batch(store, "warmup", 20, now):  # every script loaded, every shared key made, then emptied
        finish(store, ref, 0, now)
    purge_finished(store, 0, now=now + 13)
    used_0, stream_0 = memory.read()
    refs = run_batch(store, "nightly", jobs, now)
    used_waiting, _ = memory.read()
    began = time.perf_counter()
    for i, ref in enumerate(refs):
        finish(store, ref, i, now)
    finish_s = time.perf_counter() - began
    used_finished, stream_finished = memory.read()
    began = time.perf_counter()
    purged = purge_finished(store, settings.retention_s, now=now + settings.retention_s + 60)
    purge_s = time.perf_counter() - began
    used_purged, stream_purged = memory.read()
    assert purged.jobs == jobs and purged.batches == 1, purged
    client.close()
    return {
        "waiting": (used_waiting - used_0) / jobs,
        "finished": (used_finished - used_0 - (stream_finished - stream_0)) / jobs,
        "event": (stream_finished - stream_0) / jobs,
        "purged": (used_purged - used_0 - (stream_purged - stream_0)) / jobs,
        "finish_s": finish_s,
        "purge_s": purge_s,
    }


def report(settings: Settings, f: dict[str, float], jobs: int, per_day: int) -> None:
    retention_d = settings.retention_s / 86400
    from config.celery_app import PURGE_EVERY_S

    kept_days = retention_d + PURGE_EVERY_S / 86400
    events_cap = settings.event_stream_maxlen * f["event"]
    mb = 1e6
    print(f"{jobs:,} jobs of {MODEL} (1 image, prompt {PROMPT_CHARS} chars, actual prompt {ACTUAL_PROMPT_CHARS})")
    print("| per job | bytes |\n|---|---|")
    print(f"| waiting for a slot (record, wait queue, place in the batch) | {f['waiting']:,.0f} |")
    print(f"| finished (record, task owner, place in the batch and the finished index) | {f['finished']:,.0f} |")
    cap = f"capped at {settings.event_stream_maxlen:,} events"
    print(f"| its event in `{settings.event_stream}` ({cap}) | {f['event']:,.0f} |")
    print(f"| left after the purge | {f['purged']:,.0f} |")
    print(
        f"purge: {jobs:,} jobs in {f['purge_s']:.2f} s ({jobs / f['purge_s']:,.0f} jobs/s; beat removes up to "
        f"{PURGE_RUN_BUDGET:,} every {PURGE_EVERY_S:.0f} s); taking them through the store took {f['finish_s']:.1f} s"
    )
    print(f"\nat {per_day:,} jobs a day, retention {retention_d:g} d:")
    print("| | MB |\n|---|---|")
    print(f"| added per day without retention (grows for good) | {per_day * f['finished'] / mb:,.0f} |")
    print(
        f"| finished jobs held with retention (steady: {kept_days:.2f} days of jobs) | "
        f"{per_day * kept_days * f['finished'] / mb:,.0f} |"
    )
    print(f"| event stream at its cap ({settings.event_stream_maxlen:,} events) | {events_cap / mb:,.0f} |")
    print(f"| each 100,000 jobs waiting for a slot | {100_000 * f['waiting'] / mb:,.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
