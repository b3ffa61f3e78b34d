"""The Grafana dashboard against a real Prometheus that scrapes two workers at once: every panel shows the fleet's
figures once, checked against the fleet's true figures from the job store, the quota and the simulator.

Two workers serve the same fleet state (read from Redis at scrape time), which a panel must take once, and each
serves the counters of its own processes, which a panel must add up. The test runs a small batch of images over
two accounts (with a create 429, a query 429, a failed download and a partial task), then fills the video slots of
both accounts with tasks that run for minutes, pauses one account, and once Prometheus has scraped that state from
both workers it evaluates every target of every panel and compares it with what the records say.

Counters start with the workers, at zero (`workers.metrics.preset`), and the whole run fits in the panels' 5-minute
windows, so `rate(c[5m]) * 300` is what the fleet counted, up to Prometheus's extrapolation at the end of the
window (under one scrape interval over a run of at least `MIN_SAMPLED_S`): counter panels are compared within
`RATE_TOLERANCE`, quantiles within a fifth of the width of the bucket the true quantile falls in, state exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from config.accounts import AccountSettings, slot_limits
from ops.localstack import LocalStack
from ops.localstack.process import ManagedProcess
from ops.simulator.profiles import PROFILES, Timing
from producer.csv_source import CsvRow
from tests.conftest import RunningSimulator
from tests.prometheus import Prometheus, bucket_width, cumulative, histogram_quantile
from tests.stage_runner import batch_done, publish_rows, wait_until
from workers import account_pause, metrics
from workers.dashscope.protocol import upstream_epoch
from workers.job import TERMINAL, UPSTREAM_TIMES, Job, Status
from workers.quota.quota import Scope
from workers.runtime import make_quota

pytestmark = pytest.mark.integration
DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "genq-dashboard.json"
IMAGE, VIDEO = "wan2.5-t2i-preview", "wan2.5-t2v-preview"
SCRAPE_INTERVAL_S = 1
#: The panels' shortest window over counters: every sample of the run must fall in it.
WINDOW_S = 300
#: The run's samples span at least this long before the panels are read, so that the extrapolation to the end of a
#: window (under one scrape interval) moves a rate by under 2 %.
MIN_SAMPLED_S = 60
RATE_TOLERANCE = 0.05
#: Buckets of the histograms whose truth comes from the records (`workers/metrics.py`).
BUCKETS = {
    name: tuple(histogram._upper_bounds)  # the buckets as declared (+Inf last), to place the truth's observations
    for name, histogram in {
        "genq_upstream_queue_seconds": metrics.UPSTREAM_QUEUE,
        "genq_upstream_run_seconds": metrics.UPSTREAM_RUN,
        "genq_detection_lag_seconds": metrics.DETECTION_LAG,
        "genq_download_seconds": metrics.DOWNLOAD_SECONDS,
    }.items()
}
Series = dict[tuple[str, ...], float]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """Start a real Prometheus (the Debian package's binary) on 127.0.0.1 and a free port, scraping the given
    metrics URLs every second, its storage in tmp_path; stopped at the end. Without the binary the test is skipped
    on a developer's machine and fails in CI (`.ci/run` installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "Prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    started: list[ManagedProcess] = []

    def start(metrics_urls: list[str]) -> Prometheus:
        targets = [urlsplit(url).netloc for url in metrics_urls]
        prometheus = Prometheus.start(binary, targets, tmp_path, scrape_interval_s=SCRAPE_INTERVAL_S)
        started.append(prometheus.process)
        return prometheus

    yield start
    for process in started:
        process.stop()


# --- the fleet's true figures -----------------------------------------------------------------------------------
@dataclass
class Fleet:
    """What the records say: the job store, the quota, the simulator, and the workers' own scrapes (only for the
    download times, which nothing else records)."""

    jobs: list[Job]
    held: dict[tuple[str, str], int]
    limits: dict[tuple[str, str], int]
    paused: list[str]
    sim: dict[str, Any]  # GET /_sim/counters
    sim_tasks: list[dict[str, Any]]  # GET /_sim/tasks
    scrapes: list[str]  # each worker's /metrics, as text
    ended: list[Job] = field(init=False)

    def __post_init__(self) -> None:
        self.ended = [job for job in self.jobs if job.terminal]

    def per_minute(self, count: float) -> float:
        """What `rate(c[5m]) * 60` shows for a counter that rose by `count` during the run."""
        return count / WINDOW_S * 60


def observations(fleet: Fleet, name: str) -> dict[str, list[float]]:
    """Model -> what the histogram `name` observed, from the records: the service's timestamps, and when genq
    recorded the answer."""
    seen: dict[str, list[float]] = defaultdict(list)
    for job in fleet.ended:
        submitted, scheduled, ended = (upstream_epoch(job.upstream.get(k, "")) for k in UPSTREAM_TIMES)
        assert submitted is not None and scheduled is not None and ended is not None and job.results_at, job
        value = {
            "genq_upstream_queue_seconds": scheduled - submitted,
            "genq_upstream_run_seconds": ended - scheduled,
            "genq_detection_lag_seconds": job.results_at - ended,
        }[name]
        seen[job.request.model].append(max(0.0, value))
    return seen


def scraped_buckets(fleet: Fleet, name: str) -> dict[str, list[tuple[float, float]]]:
    """Model -> the histogram `name`'s cumulative buckets summed over both workers' scrapes."""
    summed: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for text in fleet.scrapes:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    summed[sample.labels["model"]][float(sample.labels["le"])] += sample.value
    return {model: sorted(by_bound.items()) for model, by_bound in summed.items()}


# --- what each panel must show ----------------------------------------------------------------------------------
@dataclass
class Expect:
    """A panel target's series: exactly these labels (no `instance`: one series per fleet figure), summed over the
    others to `by` before comparing with `values` (absent: 0; a NaN shown: no data), within `rel` or `abs`."""

    labels: tuple[str, ...]
    values: Series
    by: tuple[str, ...] | None = None
    rel: float = 0.0
    abs: Callable[[float], float] = lambda _: 1e-9


def state(labels: tuple[str, ...], values: Series) -> list[Expect]:
    return [Expect(labels, values)]


def rate(labels: tuple[str, ...], values: Series) -> list[Expect]:
    return [Expect(labels, values, rel=RATE_TOLERANCE)]


def quantile(fleet: Fleet, name: str, q: float) -> list[Expect]:
    bounds = BUCKETS[name]
    if name == "genq_download_seconds":
        fleet_buckets = scraped_buckets(fleet, name)
    else:
        fleet_buckets = {m: cumulative(v, bounds) for m, v in observations(fleet, name).items()}
    quantiles = {(model,): histogram_quantile(q, b) for model, b in fleet_buckets.items()}
    truth: Series = {k: v for k, v in quantiles.items() if not math.isnan(v)}
    assert truth, f"the run observed nothing for {name}"
    return [Expect(("model",), truth, rel=0.02, abs=lambda v: bucket_width(v, bounds) / 5)]


def jobs_by_status(fleet: Fleet) -> list[Expect]:
    counts = Counter(job.status.value for job in fleet.jobs)
    return state(("status",), {(status,): float(n) for status, n in counts.items()})


def per_scope(values: dict[tuple[str, str], float]) -> Series:
    return {(account, model): value for (account, model), value in values.items()}


def utilisation(fleet: Fleet) -> list[Expect]:
    return state(("account", "model"), per_scope({s: fleet.held[s] / fleet.limits[s] for s in fleet.limits}))


def tasks_upstream(fleet: Fleet) -> list[Expect]:
    return state(("account", "model"), per_scope({s: float(n) for s, n in fleet.held.items()}))


def slot_limit(fleet: Fleet) -> list[Expect]:
    return state(("account", "model"), per_scope({s: float(n) for s, n in fleet.limits.items()}))


def accounts_paused(fleet: Fleet) -> list[Expect]:
    return state((), {(): float(len(fleet.paused))})


def jobs_ending(fleet: Fleet) -> list[Expect]:
    counts = Counter(job.status.value for job in fleet.ended)
    return rate(("status",), {(s,): fleet.per_minute(n) for s, n in counts.items() if s in TERMINAL})


def throttled(fleet: Fleet) -> list[Expect]:
    """Per scope from the jobs' own count of 429s, per endpoint from the simulator's count of 429s sent."""
    by_scope: dict[tuple[str, ...], float] = defaultdict(float)
    for job in fleet.jobs:
        by_scope[(job.account or "", job.request.model)] += fleet.per_minute(job.throttles)
    sent = fleet.sim["counters"]
    creates = sum(sent.get(k, 0) for k in ("throttled_burst", "throttled_submit", "throttled_concurrency"))
    by_endpoint: Series = {
        ("create",): fleet.per_minute(creates),
        ("query",): fleet.per_minute(sent.get("throttled_query", 0)),
    }
    labels = ("account", "model", "endpoint")
    return [
        Expect(labels, dict(by_scope), by=("account", "model"), rel=RATE_TOLERANCE),
        Expect(labels, by_endpoint, by=("endpoint",), rel=RATE_TOLERANCE),
    ]


def polls_per_job(fleet: Fleet) -> list[Expect]:
    polls: dict[str, list[int]] = defaultdict(list)
    for job in fleet.ended:
        polls[job.request.model].append(job.poll_count)
    return [Expect(("model",), {(m,): sum(p) / len(p) for m, p in polls.items()}, rel=RATE_TOLERANCE)]


def bytes_stored(fleet: Fleet) -> list[Expect]:
    stored = sum(obj["size"] for job in fleet.ended for obj in job.objects)
    return rate((), {(): stored / WINDOW_S})


def finalize_failures(fleet: Fleet) -> list[Expect]:
    return rate((), {(): fleet.per_minute(sum(job.finalize_errors for job in fleet.jobs))})


def results_at_risk(fleet: Fleet) -> list[Expect]:
    return state((), {(): float(sum(job.at_risk for job in fleet.jobs))})


def billed(fleet: Fleet) -> list[Expect]:
    """The simulator's own rule: every image of a task that ended SUCCEEDED, failed sub-images aside."""
    units: dict[tuple[str, ...], float] = defaultdict(float)
    for task in fleet.sim_tasks:
        if task["status"] == "SUCCEEDED":
            units[(task["account"], task["model"])] += task["n"] - len(task["failed_indices"])
    return [Expect(("account", "model"), dict(units), rel=RATE_TOLERANCE)]


#: Every target of every panel (panel id, refId): what the fleet's figure is. A panel added without its truth here
#: fails the test.
PANELS: dict[tuple[int, str], Callable[[Fleet], list[Expect]]] = {
    (1, "A"): jobs_by_status,
    (2, "A"): utilisation,
    (3, "A"): tasks_upstream,
    (3, "B"): slot_limit,
    (4, "A"): accounts_paused,
    (5, "A"): jobs_ending,
    (6, "A"): throttled,
    (7, "A"): lambda f: quantile(f, "genq_upstream_queue_seconds", 0.5),
    (7, "B"): lambda f: quantile(f, "genq_upstream_queue_seconds", 0.95),
    (8, "A"): lambda f: quantile(f, "genq_upstream_run_seconds", 0.5),
    (8, "B"): lambda f: quantile(f, "genq_upstream_run_seconds", 0.95),
    (9, "A"): lambda f: quantile(f, "genq_detection_lag_seconds", 0.95),
    (10, "A"): polls_per_job,
    (11, "A"): bytes_stored,
    (12, "A"): lambda f: quantile(f, "genq_download_seconds", 0.95),
    (13, "A"): finalize_failures,
    (14, "A"): results_at_risk,
    (15, "A"): billed,
}


def check(title: str, ref: str, expr: str, shown: list[tuple[dict[str, str], float]], expect: Expect) -> None:
    series: Series = defaultdict(float)
    for labels, value in shown:
        assert tuple(sorted(labels)) == tuple(sorted(expect.labels)), (
            f"{title!r} {ref}: a series labelled {labels}, the fleet's figures are by {expect.labels}: {expr}"
        )
        if not math.isnan(value):
            by = expect.by or expect.labels
            series[tuple(labels[name] for name in by)] += value
    for key in sorted(set(series) | set(expect.values)):
        actual, truth = series.get(key, 0.0), expect.values.get(key, 0.0)
        assert actual == pytest.approx(truth, rel=expect.rel, abs=expect.abs(truth)), (
            f"{title!r} {ref} {dict(zip(expect.by or expect.labels, key, strict=True))}: shows {actual}, "
            f"the fleet's figure is {truth}: {expr}"
        )


# --- the run ----------------------------------------------------------------------------------------------------
def two_accounts(sim: RunningSimulator) -> tuple[AccountSettings, ...]:
    """Limits that differ from the catalogue's (5 at once for both models) and from each other: images 2 at once
    each (acct-a with 2 more queued upstream: 4 slots; acct-b 2), videos 1 at once + 1 queued (acct-a: 2 slots)
    and 3 at once (acct-b: 3 slots)."""
    return (
        AccountSettings(
            name="acct-a", api_keys=(SecretStr("key-a"),), base_url=sim.base_url, limits={IMAGE: (5, 2), VIDEO: (2, 1)}
        ),
        AccountSettings(
            name="acct-b",
            api_keys=(SecretStr("key-b"),),
            base_url=sim.base_url,
            limits={IMAGE: (5, 2), VIDEO: (2, 3)},
            server_queue_depth=0,
        ),
    )


IMAGE_ROWS = [
    {"prompt": "a sim:burst:once"},
    {"prompt": "b sim:query_429:once"},
    {"prompt": "c sim:url_fail_once"},
    {"prompt": "d sim:task_partial", "n": "3"},
    *({"prompt": p} for p in "efghi"),
]


def rows(batch: str, fields: list[dict[str, str]], model: str) -> list[CsvRow]:
    return [CsvRow(i + 2, {"id": f"{batch}{i}", "model": model, **f}) for i, f in enumerate(fields)]


def test_every_panel_shows_the_fleets_figures_once_with_two_workers_scraped(
    local_stack_factory: Callable[..., LocalStack],
    simulator_factory: Callable[..., RunningSimulator],
    prometheus_factory: Callable[[list[str]], Prometheus],
) -> None:
    """Every target of every dashboard panel, evaluated by Prometheus over two workers' metrics (distinct
    instances), equals the fleet's true figure from the job store, the quota and the simulator: state served alike
    by both workers counted once, each worker's counters added, per account and model where the panel says so."""
    profile = replace(PROFILES["fast"], timing=Timing(image_s=(0.5, 1.5), video_s=(900.0, 900.0)))
    sim = simulator_factory(profile=profile, keys={"key-a": "acct-a", "key-b": "acct-b"})
    sim.engine.configure(limits={IMAGE: [5, 2], VIDEO: [2, 3]})
    accounts = two_accounts(sim)
    stack = local_stack_factory(
        workers=2,
        metrics=True,
        accounts=accounts,
        result_hosts=(urlsplit(sim.url).netloc,),
        require_https_results=False,
        worker_concurrency=2,
    )
    prometheus = prometheus_factory(stack.metrics_urls)
    wait_until(lambda: _scraped_with_series(prometheus), 60, "Prometheus to scrape both workers' series")
    first_scrape = time.monotonic()

    # A batch of images over both accounts: every counter and histogram moves.
    store, _ = publish_rows(stack, "a", rows("a", IMAGE_ROWS, IMAGE))
    wait_until(batch_done(store, "a"), 120, "the image batch to end")

    # Videos fill every video slot of both accounts and run for minutes; two more wait; acct-b is paused.
    quota, limits = make_quota(stack.settings), slot_limits(accounts, stack.settings.catalogue)
    video_scopes = [Scope(a.name, VIDEO) for a in accounts]
    publish_rows(stack, "b", rows("b", [{"prompt": f"v{i}"} for i in range(7)], VIDEO))

    def videos_settled() -> bool:
        held = quota.slots_held(video_scopes, time.time())
        statuses = Counter(job.status for job in store.jobs("b"))
        full = all(held[s] == limits[s.account][VIDEO] for s in video_scopes)
        return full and statuses == {Status.RUNNING: sum(held.values()), Status.ACCEPTED: 7 - sum(held.values())}

    wait_until(videos_settled, 60, "every video slot to hold a running task")
    account_pause.pause(store, "acct-b", code="Arrearage", message="the test pauses it", now=time.time())
    wait_until(
        lambda: prometheus.value('count(genq_account_paused{account="acct-b"} == 1) or vector(0)') == 2,
        30,
        "both workers' pause to be scraped",
    )
    time.sleep(max(0.0, first_scrape + MIN_SAMPLED_S - time.monotonic()))
    # The panels are read at one instant when the last scrape of both workers succeeded with every series (a scrape
    # that times out on a loaded machine marks a worker's series stale until the next one).
    scopes = [Scope(account, model) for account, models in limits.items() for model in models]
    deadline, complete = time.monotonic() + 30, 2.0 * len(scopes)
    while True:
        at, shown = prometheus.evaluate("count(genq_slot_limit) * min(up)")
        if [value for _, value in shown] == [complete]:
            break
        assert time.monotonic() < deadline, "no scrape of both workers with every series within 30 s"
        time.sleep(0.2)
    assert time.monotonic() - first_scrape < WINDOW_S - 30, "the run outgrew the panels' windows"

    fleet = Fleet(
        jobs=[*store.jobs("a"), *store.jobs("b")],
        held={(s.account, s.model): n for s, n in quota.slots_held(scopes, time.time()).items()},
        limits={(a, m): n for a, models in limits.items() for m, n in models.items()},
        paused=sorted(store.paused_accounts()),
        sim=httpx.get(f"{sim.url}/_sim/counters", timeout=10).json(),
        sim_tasks=httpx.get(f"{sim.url}/_sim/tasks", timeout=10).json()["tasks"],
        scrapes=[httpx.get(url, timeout=10).text for url in stack.metrics_urls],
    )
    assert fleet.held[("acct-b", VIDEO)] == 3 and fleet.paused == ["acct-b"]
    assert sum(job.throttles for job in fleet.jobs) >= 2 and sum(job.finalize_errors for job in fleet.jobs) >= 1

    panels = json.loads(DASHBOARD.read_text())["panels"]
    targets = {(p["id"], t["refId"]): (p["title"], t["expr"]) for p in panels for t in p["targets"]}
    assert set(targets) == set(PANELS), "every panel target needs its truth in PANELS, and only those"
    for key, (title, expr) in sorted(targets.items()):
        shown = prometheus.query(expr, at=at)
        for expect in PANELS[key](fleet):
            check(title, key[1], expr, shown, expect)


def _scraped_with_series(prometheus: Prometheus) -> bool:
    """Both workers scraped, with their counters already served at zero."""
    scraped = prometheus.query("count by (instance) (genq_billed_units_total)")
    return len(scraped) == 2
