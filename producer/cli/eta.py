"""How long a batch still needs, from the account's quota and the generation times seen so far.

The concurrency term binds (`design.md`): with `slots` tasks running at once and a mean generation time of
`t`, `remaining` jobs need about `remaining * t / slots`. `t` comes from a random sample of the batch's jobs
that already ran (the service's own `scheduled_time` and `end_time`), so the estimate needs no history and
costs one round trip per sample, whatever the batch's size. It assumes the batch has the slots to itself;
another batch of a higher band makes it optimistic.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from config.settings import Settings
from workers.admission import serving
from workers.dashscope.protocol import upstream_epoch
from workers.jobstore import BatchSummary, JobStore

SAMPLE = 200


@dataclass(frozen=True)
class Estimate:
    seconds: float
    mean_generation_s: float
    slots: int  # tasks the batch's main model runs at once, over every account serving it

    def describe(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        return f"ETA ~{minutes}m{seconds:02d}s ({self.slots} at once, {self.mean_generation_s:.1f} s per task)"


def estimate(store: JobStore, settings: Settings, batch_id: str, remaining: int) -> Estimate | None:
    """None until some job of the batch has run upstream."""
    jobs = store.sample_jobs(batch_id, SAMPLE)
    runs = []
    for job in jobs:
        started = upstream_epoch(job.upstream.get("scheduled_time", ""))
        ended = upstream_epoch(job.upstream.get("end_time", ""))
        if started is not None and ended is not None and ended >= started:
            runs.append(ended - started)
    if not runs or not jobs:
        return None
    model = Counter(j.request.model for j in jobs).most_common(1)[0][0]
    if model not in settings.catalogue:  # a model of another process's config: no limits known here, no ETA
        return None
    slots = sum(settings.limits(a.name, model).max_concurrent for a in serving(settings, model)) or 1
    mean = statistics.fmean(runs)
    return Estimate(max(0, remaining) * mean / slots, mean, slots)


def eta_line(settings: Settings, store: JobStore) -> Callable[[BatchSummary], str]:
    """The ETA line of the progress display, for a batch's summary as it stands."""

    def describe(summary: BatchSummary) -> str:
        found = estimate(store, settings, summary.batch_id, summary.total - summary.terminal)
        return found.describe() if found else "ETA: after the first task ends"

    return describe
