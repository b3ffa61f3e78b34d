"""Benchmark: does genq keep every upstream slot busy, without 429s, from 1, 4 or 8 worker processes, and how do
the usual alternatives do against the same simulator in the same run?

    python -m ops.bench_quota                 # the table in docs/benchmarks.md
    python -m ops.bench_quota --jobs 30 --only genq-1

Every scenario gets a fresh simulator (5 submits/s, 5 tasks at once for the model, 20 QPS of queries, tasks
queued in PENDING beyond the 5, generation times uniform in [--gen-low, --gen-high] s) and, for genq, a fresh
Redis, S3 server and Celery workers. Figures come from the outside: 429s, queries and task run times are
counted by the simulator; detection lag is the simulator's `end_time` to the moment the runner saw the result.

- makespan / bound: from the first enqueue to the last result noticed, over N x mean generation time /
  concurrency + one generation time (the mean is the one the simulator actually drew);
- utilisation: busy slot-seconds over concurrency x time, from the first task start to the last task start
  (after which no work is left to fill a slot with);
- 429s: creates refused (rate, burst or concurrency) and queries refused;
- polls per job: queries the simulator answered, per job.

A last part measures memory: genq workers while 1,000 and then 100,000 jobs wait for quota, with the number of
Celery messages held (queued plus unacknowledged), both of which must not grow with the batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from celery import Celery
from pydantic import SecretStr

from config.accounts import AccountSettings
from config.celery_app import create_app
from config.logging import configure_logging
from ops import bench_peers
from ops.localstack import LocalStack, isolated_settings, services
from ops.localstack.process import ManagedProcess, free_port
from producer.batch import enqueue_rows
from producer.csv_source import CsvRow
from workers.dashscope.protocol import upstream_epoch
from workers.job import Next
from workers.messages import publish, queued_messages
from workers.runtime import make_quota, make_store

MODEL = bench_peers.MODEL
CONCURRENCY, SUBMIT_RATE = 5, 5
SIM_KEY = "bench-key-0123456789"


@dataclass
class Row:
    name: str
    jobs: int
    makespan_s: float = 0.0
    bound_s: float = 0.0
    utilisation: float = 0.0
    creates: int = 0
    submit_429: int = 0
    query_429: int = 0
    polls_per_job: float = 0.0
    lag_p50_s: float = 0.0
    lag_p95_s: float = 0.0
    failed: int = 0
    notes: str = ""

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.bound_s if self.bound_s else float("nan")


@dataclass
class Simulator:
    url: str
    process: ManagedProcess
    counters_at_start: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def snapshot(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/_sim/counters", timeout=10).json()
        return answer


@contextmanager
def simulator(workdir: Path, gen_s: tuple[float, float], seed: int) -> Iterator[Simulator]:
    workdir.mkdir(parents=True, exist_ok=True)
    profile = workdir / "bench-profile.toml"
    profile.write_text(
        'base = "fast"\nconcurrency_mode = "queue"\nburst_protection = false\ntime_scale = 1.0\n'
        f'[timing]\nimage_s = [{gen_s[0]}, {gen_s[1]}]\ndistribution = "uniform"\nprompt_extend_s = 0.0\n'
        f'[limits]\n"{MODEL}" = [{SUBMIT_RATE}, {CONCURRENCY}]\n'
    )
    port = free_port()
    process = services.start_simulator(
        port,
        workdir / "logs",
        api_key=f"bench={SIM_KEY}",
        profile="fast",
        base_env={},
        profile_file=profile,
        seed=seed,
    )
    try:
        yield Simulator(f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()


def prompts(count: int) -> list[str]:
    return [f"benchmark prompt {i}: a lighthouse at dusk, variation {i}" for i in range(count)]


def upstream_figures(row: Row, sim: Simulator, started_at: float, finished_at: float) -> None:
    """Fill what the simulator knows: run intervals, 429s, queries."""
    snap = sim.snapshot()
    counters = snap["counters"]
    scope = next(s for s in snap["scopes"] if s["model"] == MODEL)
    intervals = sorted((float(a), float(b)) for a, b in scope["intervals"])
    durations = [b - a for a, b in intervals]
    mean = statistics.fmean(durations)
    row.makespan_s = finished_at - started_at
    row.bound_s = row.jobs * mean / CONCURRENCY + mean
    first, last = intervals[0][0], intervals[-1][0]
    busy = sum(max(0.0, min(b, last) - max(a, first)) for a, b in intervals)
    row.utilisation = busy / (CONCURRENCY * (last - first)) if last > first else 1.0
    row.creates = int(counters.get("creates", 0))
    row.submit_429 = sum(
        int(counters.get(k, 0)) for k in ("throttled_submit", "throttled_burst", "throttled_concurrency")
    )
    row.query_429 = int(counters.get("throttled_query", 0))
    row.polls_per_job = int(counters.get("queries", 0)) / row.jobs
    if scope["max_running"] > CONCURRENCY:
        row.notes += f" max_running={scope['max_running']}!"


def lags(row: Row, pairs: list[tuple[float | None, float]]) -> None:
    values = sorted(noticed - end for end, noticed in pairs if end is not None)
    if values:
        row.lag_p50_s = values[len(values) // 2]
        row.lag_p95_s = values[min(len(values) - 1, int(len(values) * 0.95))]


# --- genq -------------------------------------------------------------------------------------------------
def genq_settings(workdir: Path, sim: Simulator, per_worker: int, limits: tuple[float, int]) -> Any:
    account = AccountSettings(
        name="bench", api_keys=(SecretStr(SIM_KEY),), base_url=sim.base_url, limits={MODEL: limits}
    )
    return isolated_settings(
        workdir / "genq",
        accounts=(account,),
        result_hosts=(sim.url.removeprefix("http://"),),
        require_https_results=False,
        worker_concurrency=per_worker,
    )


def sender(app: Celery) -> Callable[[Next | None], None]:
    return lambda step: publish(app, step)


def wait_for_workers(settings: Any, count: int, timeout_s: float = 60) -> None:
    app = create_app(settings)
    deadline = time.monotonic() + timeout_s
    while len(app.control.ping(timeout=1.0) or []) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} Celery workers did not answer within {timeout_s:.0f} s")


def run_genq(name: str, workdir: Path, args: argparse.Namespace, processes: int, limits: tuple[float, int]) -> Row:
    workers, per_worker = (1, 1) if processes == 1 else (processes // 2, 2)
    row = Row(name, args.jobs, notes=f"{workers} worker(s) x {per_worker} processes; limits {limits}")
    with simulator(workdir, args.gen_s, args.seed) as sim:
        settings = genq_settings(workdir, sim, per_worker, limits)
        with LocalStack(settings, workers=workers) as stack:
            wait_for_workers(stack.settings, workers)
            store, celery = make_store(stack.settings), create_app(stack.settings)
            rows = [
                CsvRow(i + 2, {"id": f"j{i}", "prompt": p, "model": MODEL, "prompt_extend": "false"})
                for i, p in enumerate(prompts(args.jobs))
            ]
            started_at = time.time()
            enqueue_rows(
                store,
                stack.settings,
                "bench",
                rows,
                source="bench",
                send=sender(celery),
                quota=make_quota(stack.settings),
            )
            deadline = time.monotonic() + args.timeout_s
            while not ((summary := store.batch_summary("bench")) and summary.done):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the batch did not finish within {args.timeout_s:.0f} s")
                time.sleep(0.25)
            jobs = list(store.jobs("bench"))
            finished_at = max(max(j.times.values()) for j in jobs)
            row.failed = sum(j.status.value not in {"succeeded"} for j in jobs)
            upstream_figures(row, sim, started_at, finished_at)
            lags(row, [(upstream_epoch(j.upstream.get("end_time", "")), j.results_at or 0.0) for j in jobs])
    return row


# --- peers ------------------------------------------------------------------------------------------------
def run_sdk(name: str, workdir: Path, args: argparse.Namespace, threads: int) -> Row:
    row = Row(name, args.jobs, notes=f"{threads} threads")
    with simulator(workdir, args.gen_s, args.seed) as sim:
        started_at = time.time()
        results = bench_peers.sdk_call_pool(sim.base_url, SIM_KEY, prompts(args.jobs), threads)
        finished_at = max(r.noticed_at for r in results)
        row.failed = sum(r.status != "SUCCEEDED" for r in results)
        upstream_figures(row, sim, started_at, finished_at)
        lags(row, [(r.end_time, r.noticed_at) for r in results])
    return row


def run_celery_peer(name: str, workdir: Path, args: argparse.Namespace, workers: int, per_worker: int) -> Row:
    row = Row(name, args.jobs, notes=f"{workers} worker(s) x {per_worker}, rate_limit 5/s each, sleep 2 s")
    with simulator(workdir, args.gen_s, args.seed) as sim:
        port = free_port()
        redis_process = services.start_redis(workdir / "peer-redis", port, workdir / "logs")
        broker = f"redis://127.0.0.1:{port}/0"
        env = {"BENCH_BROKER": broker, "BENCH_BASE_URL": sim.base_url, "BENCH_API_KEY": SIM_KEY}
        procs = [
            ManagedProcess(
                f"peer-{i}",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "ops.bench_peers",
                    "worker",
                    "-c",
                    str(per_worker),
                    "-n",
                    f"peer{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "WARNING",
                ],
                log_path=workdir / "logs" / f"peer-{i}.log",
                env={**os.environ, **env},
            )
            for i in range(workers)
        ]
        try:
            peer_app = Celery("genq-bench-peer-sender", broker=broker)
            deadline = time.monotonic() + 60
            while len(peer_app.control.ping(timeout=1.0) or []) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the peer's Celery workers did not start")
            client = redis.Redis.from_url(broker)
            started_at = time.time()
            for index, prompt in enumerate(prompts(args.jobs)):
                peer_app.send_task("peer.generate", args=[f"j{index}", prompt])
            deadline = time.monotonic() + args.timeout_s
            while client.hlen(bench_peers.DONE_KEY) < args.jobs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: did not finish within {args.timeout_s:.0f} s")
                time.sleep(0.25)
            results = bench_peers.celery_results(client)
            finished_at = max(r.noticed_at for r in results)
            row.failed = sum(r.status != "SUCCEEDED" for r in results)
            upstream_figures(row, sim, started_at, finished_at)
            lags(row, [(r.end_time, r.noticed_at) for r in results])
        finally:
            for proc in procs:
                proc.stop()
            redis_process.stop()
    return row


# --- memory while a big batch waits -----------------------------------------------------------------------
def worker_rss_mb(stack: LocalStack) -> float:
    total = 0
    for proc in stack.started:
        if proc.name.startswith("worker-") and proc.alive():
            parent = psutil.Process(proc.pid)
            total += sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
    return total / 2**20


def celery_messages(celery: Celery) -> int:
    """Messages queued or delivered unacknowledged, over the stage queues (kombu's Redis lists and hash)."""
    queued = sum(queued_messages(celery, q) for q in ("submit", "poll", "finalize", "events"))
    with celery.connection_for_read() as connection:
        channel: Any = connection.default_channel
        return queued + int(channel.client.hlen("unacked"))


def run_memory(workdir: Path, args: argparse.Namespace, sizes: list[int]) -> list[str]:
    lines = []
    for size in sizes:
        with simulator(workdir / f"mem{size}", (60.0, 90.0), args.seed) as sim:
            settings = genq_settings(workdir / f"mem{size}", sim, 2, (SUBMIT_RATE, CONCURRENCY))
            with LocalStack(settings, workers=2) as stack:
                wait_for_workers(stack.settings, 2)
                store, celery = make_store(stack.settings), create_app(stack.settings)
                rows = (
                    CsvRow(i + 2, {"id": f"j{i}", "prompt": f"waiting prompt {i}", "model": MODEL}) for i in range(size)
                )
                began = time.monotonic()
                enqueue_rows(
                    store,
                    stack.settings,
                    "big",
                    rows,
                    source="bench",
                    send=sender(celery),
                    quota=make_quota(stack.settings),
                )
                enqueue_s = time.monotonic() - began
                time.sleep(20)  # submits, polls, sweeps: the workers at work while the batch waits
                rss, held = worker_rss_mb(stack), celery_messages(celery)
                waiting = store.waiting([MODEL]).get(MODEL, 0)
                lines.append(f"| {size:,} | {waiting:,} | {held} | {rss:.0f} | {enqueue_s:.1f} |")
    return lines


# --- the table --------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = (
        "| runner | makespan / bound | utilisation | creates | submit 429s | query 429s | polls/job "
        "| lag p50 / p95 (s) | failed | setup |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {r.name} | {r.makespan_s:.1f} / {r.bound_s:.1f} = **{r.ratio:.3f}** | {r.utilisation:.1%} | {r.creates} "
        f"| {r.submit_429} | {r.query_429} | {r.polls_per_job:.1f} | {r.lag_p50_s:.1f} / {r.lag_p95_s:.1f} "
        f"| {r.failed} | {r.notes.strip()} |"
        for r in rows
    ]
    return "\n".join([head, *body])


SCENARIOS = ("genq-1", "genq-4", "genq-8", "genq-2x", "sdk-c", "sdk-4c", "celery")


def scenarios(args: argparse.Namespace) -> dict[str, Callable[[Path], Row]]:
    cfg = (SUBMIT_RATE, CONCURRENCY)
    return {
        "genq-1": lambda d: run_genq("genq, 1 process", d, args, 1, cfg),
        "genq-4": lambda d: run_genq("genq, 4 processes", d, args, 4, cfg),
        "genq-8": lambda d: run_genq("genq, 8 processes", d, args, 8, cfg),
        "genq-2x": lambda d: run_genq("genq, 4 processes, limits set 2x too high", d, args, 4, (10, 10)),
        "sdk-c": lambda d: run_sdk(f"SDK call(), {CONCURRENCY} threads", d, args, CONCURRENCY),
        "sdk-4c": lambda d: run_sdk(f"SDK call(), {4 * CONCURRENCY} threads", d, args, 4 * CONCURRENCY),
        "celery": lambda d: run_celery_peer("plain Celery, sleep-and-poll", d, args, 2, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_quota", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--gen-s", type=float, nargs=2, default=(4.0, 12.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--only", nargs="*", help="scenarios to run (default: all): " + ", ".join(scenarios(parser.parse_args([])))
    )
    parser.add_argument("--memory", nargs="*", type=int, default=[1_000, 100_000], help="waiting batch sizes")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # stdout is the benchmark's table
    chosen = scenarios(args)
    names = args.only if args.only is not None else list(chosen)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genq-bench-") as tmp:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(chosen[name](Path(tmp) / name))
            except Exception as exc:  # one broken scenario must not lose the others' figures
                rows.append(Row(name, args.jobs, notes=f"error: {type(exc).__name__}: {exc}"[:200]))
            print(table([rows[-1]]).splitlines()[-1], file=sys.stderr, flush=True)
        print(
            f"\n{args.jobs} jobs of {MODEL}; simulator: {SUBMIT_RATE} submits/s, {CONCURRENCY} at once, "
            f"20 QPS; generation uniform {args.gen_s[0]:g}-{args.gen_s[1]:g} s\n"
        )
        print(table(rows))
        if args.memory:
            print(
                "\n| jobs waiting (batch) | still waiting after 20 s | Celery messages held | worker RSS (MB) "
                "| enqueue (s) |\n|---|---|---|---|---|"
            )
            for line in run_memory(Path(tmp) / "memory", args, args.memory):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
