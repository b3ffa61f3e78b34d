"""Benchmark: does genq keep every upstream slot busy, notice each result at once and stay inside the query
budget, and how does the official SDK do against the same simulator in the same run?

    python -m ops.bench_quota                                   # issue 19's scenarios, then the memory part
    python -m ops.bench_quota --only genq-6s sdk-6s --jobs 15 --memory
    python -m ops.bench_quota --only genq-1 genq-2x celery      # the earlier scenarios, tasks uniform 4-12 s

Every scenario (`ops/bench_scenarios.py`; the list is in `--help`) gets a fresh simulator with its limits, its
concurrency mode and its task durations, and, for genq, a fresh Redis, S3 server and Celery workers; genq
takes the jobs through `enqueue_rows` as `genq batch` does and stores every result, the peers store nothing.
"~6 s" means lognormal durations with a median of 6 s and sigma 0.3, clipped 2 sigma either side (3.3 to
11 s); "~20 s" and "~60 s" alike.

The columns; all but makespan and lag are counted by the simulator, not by the runner:

- makespan / FIFO bound: from the first enqueue (genq) or the first call (SDK) to the last result the runner
  noticed, over the FIFO-replay bound: the tasks the service actually ran, with the run times they actually
  had, replayed per model in the order they were created on the true limits, each created as early as the
  submit rate allows and started as soon as a slot is free (`ops/bench_upstream.py`). 1.00 is a runner that
  never lets a slot idle and notices every end at once; the target is at most 1.02.
- slot use: busy slot-seconds over slots x time, from the first task start to the last task start of each
  model (after which no work is left to fill a slot with).
- lag p50 / p95 / max: from the service's `end_time` of a task to the moment the runner noticed it (genq:
  the job's `results_at`, when the poll that saw it succeed came back; SDK: when `call()` returned).
- GETs/job: task queries and task lists the service answered, over the jobs.
- peak GETs in 1 s: the most task queries and lists the account sent within any sliding second, refused ones
  included, over its budget (20): a first figure above the second means the runner broke the budget.
- query 429s: queries and lists refused over the budget. submit 429s: creates refused over the submit rate
  (or as a burst). concurrency 429s: creates refused over "tasks at once" (throttle mode only).
- creates: tasks created (above the jobs: tasks paid for twice); failed: jobs that did not succeed.

A last part measures memory: genq workers while 1,000 and then 100,000 jobs wait for quota, with the number of
Celery messages held (queued plus unacknowledged), both of which must not grow with the batch.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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
from ops.bench_scenarios import DEFAULT, MODEL, Durations, Scenario, scenarios
from ops.bench_upstream import Upstream, percentile, upstream
from ops.localstack import LocalStack, isolated_settings, services
from ops.localstack.process import ManagedProcess, free_port
from producer.batch import enqueue_rows
from producer.csv_source import CsvRow
from workers.dashscope.protocol import upstream_epoch
from workers.job import Next
from workers.messages import publish
from workers.runtime import make_quota, make_store

SIM_KEY = "bench-key-0123456789"


# --- the simulator ----------------------------------------------------------------------------------------
@dataclass
class Simulator:
    url: str
    process: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def upstream(self) -> Upstream:
        """What it counted so far (`/_sim/counters`) and how it ran each task (`/_sim/tasks`)."""
        snapshot = httpx.get(f"{self.url}/_sim/counters", timeout=30).json()
        report = httpx.get(f"{self.url}/_sim/tasks", timeout=60).json()["tasks"]
        return upstream(snapshot, report)


@contextmanager
def simulator(workdir: Path, scenario: Scenario, seed: int) -> Iterator[Simulator]:
    workdir.mkdir(parents=True, exist_ok=True)
    profile = workdir / "bench-profile.toml"
    profile.write_text(scenario.profile())
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


@dataclass
class Row:
    scenario: Scenario
    jobs: int
    started_at: float = 0.0  # first enqueue or first call
    last_noticed_at: float = 0.0  # the last result the runner noticed
    lags_s: list[float] = field(default_factory=list)
    failed: int = 0
    up: Upstream | None = None
    error: str = ""

    @property
    def makespan_s(self) -> float:
        return self.last_noticed_at - self.started_at

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.up.fifo_bound_s if self.up and self.up.fifo_bound_s else math.nan

    def noticed(self, pairs: Iterable[tuple[float | None, float | None]]) -> None:
        """Record (the service's end of a task, when the runner noticed it) pairs: lags and the last notice."""
        known = [(end, seen) for end, seen in pairs if seen is not None]
        self.last_noticed_at = max((seen for _, seen in known), default=self.started_at)
        self.lags_s = [seen - end for end, seen in known if end is not None]


# --- genq -------------------------------------------------------------------------------------------------
def genq_settings(workdir: Path, sim: Simulator, scenario: Scenario, per_worker: int) -> Any:
    """genq on the simulator, told `scenario.told` for each model; in throttle mode it keeps no task queued
    upstream (there is no upstream queue)."""
    throttle = scenario.concurrency_mode == "throttle"
    account = AccountSettings(
        name="bench",
        api_keys=(SecretStr(SIM_KEY),),
        base_url=sim.base_url,
        limits={model: scenario.told for model in scenario.models},
        concurrency_mode="throttle" if throttle else "queue",
        server_queue_depth=0 if throttle else None,
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


def run_genq(row: Row, sim: Simulator, workdir: Path, timeout_s: float) -> None:
    """The jobs as one batch, spread over the scenario's models in turn."""
    scenario = row.scenario
    workers, per_worker = scenario.genq_workers
    settings = genq_settings(workdir, sim, scenario, per_worker)
    with LocalStack(settings, workers=workers) as stack:
        wait_for_workers(stack.settings, workers)
        store, celery = make_store(stack.settings), create_app(stack.settings)
        models = scenario.models
        rows = [
            CsvRow(i + 2, {"id": f"j{i}", "prompt": p, "model": models[i % len(models)], "prompt_extend": "false"})
            for i, p in enumerate(prompts(row.jobs))
        ]
        row.started_at = time.time()
        enqueue_rows(
            store, stack.settings, "bench", rows, source="bench", send=sender(celery), quota=make_quota(stack.settings)
        )
        deadline = time.monotonic() + timeout_s
        while not ((summary := store.batch_summary("bench")) and summary.done):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario.name}: the batch did not finish within {timeout_s:.0f} s")
            time.sleep(0.25)
        jobs = list(store.jobs("bench"))
        row.failed = sum(j.status.value != "succeeded" for j in jobs)
        row.noticed((upstream_epoch(j.upstream.get("end_time", "")), j.results_at) for j in jobs)


# --- peers ------------------------------------------------------------------------------------------------
def run_sdk(row: Row, sim: Simulator) -> None:
    row.started_at = time.time()
    results = bench_peers.sdk_call_pool(sim.base_url, SIM_KEY, prompts(row.jobs), row.scenario.threads)
    row.failed = sum(r.status != "SUCCEEDED" for r in results)
    row.noticed((r.end_time, r.noticed_at) for r in results)


def run_celery_peer(row: Row, sim: Simulator, workdir: Path, timeout_s: float, workers: int = 2) -> None:
    port = free_port()
    redis_process = services.start_redis(workdir / "peer-redis", port, workdir / "logs")
    broker = f"redis://127.0.0.1:{port}/0"
    env = {"BENCH_BROKER": broker, "BENCH_BASE_URL": sim.base_url, "BENCH_API_KEY": SIM_KEY}
    argv = [sys.executable, "-m", "celery", "-A", "ops.bench_peers", "worker", "-c", str(row.scenario.threads)]
    procs = [
        ManagedProcess(
            f"peer-{i}",
            [*argv, "-n", f"peer{i}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
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
        row.started_at = time.time()
        for index, prompt in enumerate(prompts(row.jobs)):
            peer_app.send_task("peer.generate", args=[f"j{index}", prompt])
        deadline = time.monotonic() + timeout_s
        while client.hlen(bench_peers.DONE_KEY) < row.jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{row.scenario.name}: did not finish within {timeout_s:.0f} s")
            time.sleep(0.25)
        results = bench_peers.celery_results(client)
        row.failed = sum(r.status != "SUCCEEDED" for r in results)
        row.noticed((r.end_time, r.noticed_at) for r in results)
    finally:
        for proc in procs:
            proc.stop()
        redis_process.stop()


def run(scenario: Scenario, jobs: int, workdir: Path, args: argparse.Namespace) -> Row:
    """One scenario against its own simulator; the simulator's figures are read once the runner is done."""
    row = Row(scenario, jobs)
    with simulator(workdir, scenario, args.seed) as sim:
        if scenario.runner == "genq":
            run_genq(row, sim, workdir, args.timeout_s)
        elif scenario.runner == "sdk":
            run_sdk(row, sim)
        else:
            run_celery_peer(row, sim, workdir, args.timeout_s)
        row.up = sim.upstream()
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
    """Messages queued or delivered unacknowledged, over the stage queues (kombu's Redis lists and hash).

    Read on a connection of its own: through the app's pool (`workers.messages.queued_messages`), the first
    command after the 20 s of quiet answered None (kombu 5.7, redis-py 8.1; seen 2026-12-02)."""
    with celery.connection_for_read() as connection:
        channel: Any = connection.default_channel  # kombu's Redis channel
        client = channel.client
        queued = sum(int(client.llen(queue)) for queue in ("submit", "poll", "finalize", "events"))
        return queued + int(client.hlen("unacked"))


def run_memory(workdir: Path, args: argparse.Namespace, sizes: list[int]) -> Iterator[str]:
    waiting_scenario = Scenario("memory", "genq, a batch waiting", "genq", 0, Durations(60.0, 90.0))
    for size in sizes:
        with simulator(workdir / f"mem{size}", waiting_scenario, args.seed) as sim:
            settings = genq_settings(workdir / f"mem{size}", sim, waiting_scenario, 2)
            with LocalStack(settings, workers=2) as stack:
                wait_for_workers(stack.settings, 2)
                store, celery = make_store(stack.settings), create_app(stack.settings)
                rows = (
                    CsvRow(i + 2, {"id": f"j{i}", "prompt": f"waiting prompt {i}", "model": MODEL}) for i in range(size)
                )
                began = time.monotonic()
                quota = make_quota(stack.settings)
                enqueue_rows(store, stack.settings, "big", rows, source="bench", send=sender(celery), quota=quota)
                enqueue_s = time.monotonic() - began
                time.sleep(20)  # submits, polls, sweeps: the workers at work while the batch waits
                rss, held = worker_rss_mb(stack), celery_messages(celery)
                waiting = store.waiting([MODEL]).get(MODEL, 0)
                yield f"| {size:,} | {waiting:,} | {held} | {rss:.0f} | {enqueue_s:.1f} |"


# --- the table --------------------------------------------------------------------------------------------
HEAD = (
    "| scenario | jobs | makespan / FIFO bound (s) | slot use | lag p50 / p95 / max (s) | GETs/job "
    "| peak GETs in 1 s / budget | query 429s | submit 429s | concurrency 429s | creates | failed | setup |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_line(row: Row) -> str:
    s, up = row.scenario, row.up
    if up is None:
        return f"| {s.title} (`{s.name}`) | {row.jobs} | | | | | | | | | | | error: {row.error} |"
    lag = " / ".join(f"{percentile(row.lags_s, q):.2f}" for q in (0.5, 0.95, 1.0))
    notes = "; ".join([s.setup, f"mean run {up.mean_run_s:.1f} s", *up.over_concurrency])
    return (
        f"| {s.title} (`{s.name}`) | {row.jobs} | {row.makespan_s:.1f} / {up.fifo_bound_s:.1f} = **{row.ratio:.3f}** "
        f"| {up.slot_use:.1%} | {lag} | {up.gets / row.jobs:.1f} | {up.query_peak_1s} / {up.query_qps} "
        f"| {up.query_429} | {up.submit_429} | {up.concurrency_429} | {up.creates} | {row.failed} | {notes} |"
    )


def main(argv: list[str] | None = None) -> int:
    known = scenarios((4.0, 12.0))
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_quota",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios (default: the first nine; the others with --only):\n"
        + "\n".join(f"  {s.name:<19} {s.jobs:>3} jobs; {s.conditions}; {s.setup}" for s in known.values()),
    )
    parser.add_argument("--only", nargs="*", choices=list(known), metavar="SCENARIO", help="scenarios to run")
    parser.add_argument("--jobs", type=int, help="jobs of every scenario (default: each scenario's own)")
    parser.add_argument("--gen-s", type=float, nargs=2, default=(4.0, 12.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per scenario")
    parser.add_argument("--memory", nargs="*", type=int, default=[1_000, 100_000], help="waiting batch sizes")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # stdout is the benchmark's table
    chosen = scenarios((args.gen_s[0], args.gen_s[1]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="genq-bench-") as tmp:
        for name in args.only if args.only is not None else DEFAULT:
            scenario, jobs = chosen[name], args.jobs or chosen[name].jobs
            print(f"running {name}: {jobs} jobs; {scenario.conditions} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run(scenario, jobs, Path(tmp) / name, args))
            except Exception as exc:  # one broken scenario must not lose the others' figures
                rows.append(Row(scenario, jobs, error=f"{type(exc).__name__}: {exc}"[:200]))
            print(table_line(rows[-1]), file=sys.stderr, flush=True)
        if rows:
            print("\n" + "\n".join(f"- `{r.scenario.name}`: {r.scenario.conditions}" for r in rows) + "\n")
            print("\n".join([HEAD, *(table_line(r) for r in rows)]))
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
