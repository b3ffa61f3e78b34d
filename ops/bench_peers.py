"""What people write instead of genq, run against the same simulator by `ops.bench_quota`.

- `sdk_call_pool`: the official SDK's blocking `ImageSynthesis.call` in a thread pool; a create refused with a
  429 is tried again after a second, as a user's loop would (the SDK itself hands the 429 back).
- `app` / `generate`: a plain Celery task that creates the task, then sleeps between polls in the worker,
  with Celery's per-worker `rate_limit` as its only limiter and `self.retry` on a 429. Started as
  `celery -A ops.bench_peers worker` with `BENCH_BROKER`, `BENCH_BASE_URL`, `BENCH_API_KEY` set.

Each records, per job, when the service says the task ended and when the peer noticed.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from celery import Celery, Task

from workers.dashscope.protocol import upstream_epoch

MODEL = "wan2.5-t2i-preview"
CREATE_PATH = "/services/aigc/text2image/image-synthesis"
POLL_SLEEP_S = 2.0
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}


@dataclass(frozen=True)
class PeerResult:
    job: str
    status: str
    end_time: float | None  # the service's end of the task (epoch s)
    noticed_at: float  # when the peer saw it


def sdk_call_pool(base_url: str, api_key: str, prompts: list[str], threads: int) -> list[PeerResult]:
    """Run every prompt through `ImageSynthesis.call` on `threads` threads."""
    import dashscope
    from dashscope import ImageSynthesis
    from dashscope.common.error import InvalidTask

    dashscope.base_http_api_url = base_url

    def one(index: int) -> PeerResult:
        while True:
            try:
                rsp = ImageSynthesis.call(
                    api_key=api_key, model=MODEL, prompt=prompts[index], n=1, size="1280*1280", prompt_extend=False
                )
            except InvalidTask as exc:  # call() raises this when its create was refused
                if "Throttling" in str(exc) or "429" in str(exc):
                    time.sleep(1.0)  # what a user's loop does with the SDK's 429
                    continue
                return PeerResult(f"j{index}", f"create failed: {exc}", None, time.time())
            code = str(getattr(rsp, "code", "") or "")
            if rsp.status_code == 429 or code.startswith("Throttling"):
                time.sleep(1.0)  # what a user's loop does with the SDK's 429
                continue
            output: Any = rsp.output or {}
            status = str(output.get("task_status") or f"HTTP{rsp.status_code}")
            return PeerResult(f"j{index}", status, upstream_epoch(output.get("end_time") or ""), time.time())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(len(prompts))))


# --- the plain Celery peer ----------------------------------------------------------------------------------
app = Celery("genq-bench-peer", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
DONE_KEY = "bench:peer:done"


def _http() -> tuple[httpx.Client, str]:
    headers = {"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}"}
    return httpx.Client(timeout=30, headers=headers), os.environ["BENCH_BASE_URL"]


@app.task(bind=True, name="peer.generate", rate_limit=os.environ.get("BENCH_RATE_LIMIT", "5/s"), max_retries=50)
def generate(self: Task, job: str, prompt: str) -> None:  # type: ignore[type-arg]
    http, base = _http()
    body = {"model": MODEL, "input": {"prompt": prompt}, "parameters": {"n": 1, "prompt_extend": False}}
    created = http.post(base + CREATE_PATH, json=body, headers={"X-DashScope-Async": "enable"})
    if created.status_code == 429:
        raise self.retry(countdown=2)
    task_id = created.json()["output"]["task_id"]
    while True:
        time.sleep(POLL_SLEEP_S)
        answer = http.get(f"{base}/tasks/{task_id}")
        if answer.status_code != 200:
            continue
        output = answer.json()["output"]
        if output["task_status"] in TERMINAL:
            break
    record = {"status": output["task_status"], "end_time": upstream_epoch(output.get("end_time") or "")}
    redis.Redis.from_url(os.environ["BENCH_BROKER"]).hset(DONE_KEY, job, json.dumps({**record, "at": time.time()}))


def celery_results(client: redis.Redis) -> list[PeerResult]:
    raw: dict[bytes, bytes] = client.hgetall(DONE_KEY)  # type: ignore[assignment]
    out = []
    for job, value in raw.items():
        record = json.loads(value)
        out.append(PeerResult(job.decode(), record["status"], record["end_time"], record["at"]))
    return out
