"""What a chaos run does: the batch it sends and the disruptions it causes, as one plain description.

`ChaosPlan.full()` is the run whose table is in `docs/reliability.md`; `ChaosPlan.reduced()` is the form the
test suite runs. Both send a CSV of mixed models (three image models at n = 1..4, two video models) to the
simulator's `hostile` profile.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

#: model -> share of the batch. Image models of both protocols (wan2.6 speaks `messages`), and some video.
#: wan2.2-t2i-flash has 2 slots where the others have 5 (documented), so its share is kept small: it would
#: otherwise set the run's length alone.
MODEL_MIX = {
    "wan2.5-t2i-preview": 0.35,
    "wan2.6-t2i": 0.35,
    "wan2.2-t2i-flash": 0.15,
    "wan2.5-t2v-preview": 0.08,
    "wan2.6-t2v": 0.07,
}
#: The smallest size each model accepts: the audit downloads every stored object to check its sha256.
SMALL_SIZES = {
    "wan2.5-t2i-preview": "768*768",
    "wan2.6-t2i": "768*768",
    "wan2.2-t2i-flash": "512*512",
    "wan2.5-t2v-preview": "832*480",
    "wan2.6-t2v": "1280*720",  # wan2.6 video has no 480P
}
#: The faults `triggered_every` makes sure of, in turn: deadline races (half of them: a long task passes the
#: deadline about 40 % of the time), creates lost on their way in, unparseable result URLs, UNKNOWN flaps.
TRIGGERED = ("task_long", "create_hang", "task_long", "url_unparseable", "task_long", "task_unknown_flap")
SUBJECTS = ("a lighthouse at dusk", "a fox asleep in snow", "a tram in the rain", "a market at noon", "a glacier")
COLUMNS = ("id", "prompt", "model", "size", "n", "seed", "duration")


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 1000
    workers: int = 3  # Celery worker nodes alive at any time (a killed one is replaced at once)
    worker_concurrency: int = 4
    kill_every_s: float = 5.0  # mean gap between two SIGKILLs (each gap drawn from 0.5x..1.5x)
    redis_restart_at: float = 0.25  # restart Redis once this share of the jobs is terminal
    redis_down_s: float = 3.0
    s3_outage_at: float = 0.5  # stop the S3 server once this share is terminal ...
    s3_outage_s: float = 30.0  # ... for this long
    seed: int = 8
    finalize_retry_cap_s: float = 60.0  # genq's default: the longest wait between two tries to store a result
    timeout_s: float = 2700.0  # give up waiting for the batch after this long (the jobs left are "lost")
    settle_s: float = 30.0  # after the last job ended, how long the sweep gets to hand back stray slots
    # Deadline races: far shorter deadlines than genq's defaults (600 s / 1800 s), so that the simulator's
    # `task_long` tasks (10x their drawn 1-6 s, or 2-10 s for videos) succeed just before them, or run on past
    # them and must be waited for (overdue), and tasks queued behind them are still PENDING when they pass.
    image_deadline_s: float = 30.0
    video_deadline_s: float = 60.0
    overdue_poll_s: float = 5.0  # genq's default is 60 s: the run's tail would wait on it
    # The webhook: every event goes to a receiver that verifies it with the `standardwebhooks` package. Once this
    # share of the jobs is terminal, it black-holes connections for `webhook_outage_s`; meanwhile `genq:events`
    # is trimmed to `events_trimmed_to` entries every second; as it ends, one malformed entry is appended.
    webhook_outage_at: float = 0.6
    webhook_outage_s: float = 30.0
    events_trimmed_to: int = 10
    webhook_outbox_max: int = 50  # a small outbox, so the outage fills it and "outbox full" is dead-lettered
    # Every this many rows, the prompt carries a trigger word (`TRIGGERED`, in turn), so that the rare faults the
    # audit must see handled do fire in a short run, not only by probability. 0: by probability alone.
    triggered_every: int = 0

    @classmethod
    def full(cls) -> ChaosPlan:
        return cls()

    @classmethod
    def reduced(cls) -> ChaosPlan:
        """About 200 jobs with every disruption of the full run, for the test suite (a few minutes)."""
        # A shorter tail after the S3 outage, and the rare faults made sure to fire.
        return cls(jobs=200, timeout_s=600.0, finalize_retry_cap_s=10.0, triggered_every=10)


def chaos_rows(plan: ChaosPlan) -> list[dict[str, str]]:
    """The batch: `plan.jobs` rows, models drawn by `MODEL_MIX`, each prompt unique (the audit matches upstream
    tasks to jobs by it), images at n = 1..4, videos of 5 s."""
    rng = random.Random(plan.seed)
    models, weights = zip(*MODEL_MIX.items(), strict=True)
    rows = []
    for index in range(plan.jobs):
        model = rng.choices(models, weights)[0]
        video = "t2v" in model
        prompt = f"chaos job {index:05d}: {rng.choice(SUBJECTS)}"
        if plan.triggered_every and index % plan.triggered_every == plan.triggered_every - 1:
            prompt += f" sim:{TRIGGERED[(index // plan.triggered_every) % len(TRIGGERED)]}"
        rows.append(
            {
                "id": f"c{index:05d}",
                "prompt": prompt,
                "model": model,
                "size": SMALL_SIZES[model],
                "n": "1" if video else str(rng.randint(1, 4)),
                "seed": str(rng.randrange(2**31)),
                "duration": "5" if video else "",
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """The batch as the CSV `genq batch` would read (kept beside the run's logs, to be looked at or re-run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
