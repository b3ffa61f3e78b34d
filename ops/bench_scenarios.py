"""The scenarios of `ops.bench_quota`: what the simulator allows, how long its tasks take, who runs the jobs.

Issue 19's scenarios come first and run by default; the earlier ones (one model, tasks uniform in
`--gen-s`, genq at 1, 4 and 8 processes, the SDK at 5 and 20 threads, a plain Celery loop) stay selectable
by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ops import bench_peers

MODEL = bench_peers.MODEL
CONCURRENCY, SUBMIT_RATE = 5, 5
#: One account's models for the many-models scenario: the catalogue's nine image models and, for a tenth, a
#: video model whose tasks the profile times like the images (the catalogue has no tenth image model).
MANY_MODELS = (
    "wan2.6-t2i",
    "wan2.5-t2i-preview",
    "wan2.2-t2i-flash",
    "wan2.2-t2i-plus",
    "wanx2.1-t2i-turbo",
    "wanx2.1-t2i-plus",
    "wanx2.0-t2i-turbo",
    "qwen-image",
    "qwen-image-plus",
    "wan2.6-t2v",
)


@dataclass(frozen=True)
class Durations:
    """How long the simulator runs a task: uniform in [low, high], or lognormal with its median at their
    geometric mean and sigma = ln(high / low) / 4, clipped to them (`ops/simulator/profiles.py`)."""

    low_s: float
    high_s: float
    distribution: str = "uniform"

    @classmethod
    def lognormal(cls, median_s: float, sigma: float) -> Durations:
        """Median `median_s`, this sigma, clipped 2 sigma either side."""
        return cls(median_s * math.exp(-2 * sigma), median_s * math.exp(2 * sigma), "lognormal")

    def __str__(self) -> str:
        if self.distribution == "lognormal":
            median, sigma = math.sqrt(self.low_s * self.high_s), math.log(self.high_s / self.low_s) / 4
            return f"lognormal median {median:g} s sigma {sigma:.2g} (clipped {self.low_s:.1f}-{self.high_s:.1f} s)"
        return f"uniform {self.low_s:g}-{self.high_s:g} s"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    runner: str  # "genq" | "sdk" | "celery"
    jobs: int
    durations: Durations
    models: tuple[str, ...] = (MODEL,)
    limits: tuple[int, int] = (SUBMIT_RATE, CONCURRENCY)  # the simulator's, per model: submits/s, tasks at once
    told: tuple[float, int] = (SUBMIT_RATE, CONCURRENCY)  # what genq is told, per model
    concurrency_mode: str = "queue"  # the simulator's: excess tasks wait in PENDING, or get 429 ("throttle")
    processes: int = 4  # genq: 1 worker of 1 process, else workers of 2 processes each
    threads: int = CONCURRENCY  # SDK call(): threads; plain Celery: processes of each of its 2 workers

    @property
    def genq_workers(self) -> tuple[int, int]:
        """Workers, and processes per worker."""
        return (1, 1) if self.processes == 1 else (self.processes // 2, 2)

    @property
    def setup(self) -> str:
        if self.runner == "genq":
            workers, per_worker = self.genq_workers
            queue = ", server queue 0" if self.concurrency_mode == "throttle" else ""
            return f"{workers} worker(s) x {per_worker} processes; told {self.told} per model{queue}"
        if self.runner == "sdk":
            return f"{self.threads} threads"
        return f"2 worker(s) x {self.threads}, rate_limit 5/s each, sleep 2 s"

    @property
    def conditions(self) -> str:
        models = self.models[0] if len(self.models) == 1 else f"{len(self.models)} models of one account"
        return (
            f"{models}; {self.durations}; simulator {self.limits[0]}/s and {self.limits[1]} at once per model, "
            f"{self.concurrency_mode} mode, 20 queries/s"
        )

    def profile(self) -> str:
        """The simulator's profile (TOML): no faults, no burst protection, these limits and durations (videos
        timed like images)."""
        bounds = f"[{self.durations.low_s}, {self.durations.high_s}]"
        lines = [
            'base = "fast"',
            f'concurrency_mode = "{self.concurrency_mode}"',
            "burst_protection = false",
            "time_scale = 1.0",
            "[timing]",
            f"image_s = {bounds}",
            f"video_s = {bounds}",
            f'distribution = "{self.durations.distribution}"',
            "prompt_extend_s = 0.0",
            "[limits]",
            *(f'"{model}" = [{self.limits[0]}, {self.limits[1]}]' for model in self.models),
        ]
        return "\n".join(lines) + "\n"


def scenarios(gen_s: tuple[float, float]) -> dict[str, Scenario]:
    """Every scenario by name: issue 19's first, then the earlier ones (tasks uniform in `gen_s`)."""
    six, twenty, sixty = (Durations.lognormal(median_s, 0.3) for median_s in (6.0, 20.0, 60.0))
    legacy = Durations(*gen_s)
    listed = [
        Scenario("genq-6s", "genq, ~6 s", "genq", 60, six),
        Scenario("sdk-6s", "SDK call(), ~6 s", "sdk", 60, six),
        Scenario("genq-20s", "genq, ~20 s", "genq", 60, twenty),
        Scenario("sdk-20s", "SDK call(), ~20 s", "sdk", 60, twenty),
        Scenario("genq-60s", "genq, ~60 s", "genq", 30, sixty),
        Scenario("sdk-60s", "SDK call(), ~60 s", "sdk", 30, sixty),
        Scenario("genq-many-models", "genq, 10 models, ~50 at once", "genq", 200, twenty, models=MANY_MODELS),
        Scenario(
            "genq-throttle-true",
            "genq, throttle mode, told the true limits",
            "genq",
            100,
            six,
            concurrency_mode="throttle",
        ),
        Scenario(
            "genq-throttle-2x",
            "genq, throttle mode, told 2x the concurrency",
            "genq",
            100,
            six,
            told=(SUBMIT_RATE, 2 * CONCURRENCY),
            concurrency_mode="throttle",
        ),
        Scenario("genq-1", "genq, 1 process", "genq", 60, legacy, processes=1),
        Scenario("genq-4", "genq, 4 processes", "genq", 60, legacy),
        Scenario("genq-8", "genq, 8 processes", "genq", 60, legacy, processes=8),
        Scenario("genq-2x", "genq, 4 processes, limits set 2x too high", "genq", 60, legacy, told=(10, 10)),
        Scenario("sdk-c", f"SDK call(), {CONCURRENCY} threads", "sdk", 60, legacy),
        Scenario("sdk-4c", f"SDK call(), {4 * CONCURRENCY} threads", "sdk", 60, legacy, threads=4 * CONCURRENCY),
        Scenario("celery", "plain Celery, sleep-and-poll", "celery", 60, legacy, threads=4),
    ]
    return {s.name: s for s in listed}


#: Issue 19's scenarios: what runs when none is named.
DEFAULT = (
    "genq-6s",
    "sdk-6s",
    "genq-20s",
    "sdk-20s",
    "genq-60s",
    "sdk-60s",
    "genq-many-models",
    "genq-throttle-true",
    "genq-throttle-2x",
)
