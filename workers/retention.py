"""Retention: finished jobs and batches leave Redis `retention_s` after they ended, so that a long-running
install's Redis (which runs `noeviction`) does not grow without bound. The bucket's manifests stay the durable
record.

The store does the removing (`JobStore.purge`: bounded, atomic per job and per batch); this module runs it in
chunks, up to a budget, for beat's periodic `genq.purge` and for `genq purge`. Why a retention is never shorter
than 25 h: `config.settings.MIN_RETENTION_S`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from workers.jobstore import JobStore

#: Jobs (and batches) removed per call of the store: each call a few Redis round trips, each job one short script.
PURGE_CHUNK = 1000
#: Jobs one periodic run removes at most, so that a backlog (the first run after an upgrade, a long outage of
#: beat) is worked off over several runs instead of holding a worker; 5,000 every 5 minutes is 1.4 million a day.
PURGE_RUN_BUDGET = 5000


@dataclass
class PurgeReport:
    """What a run removed, and whether it stopped before the end (its budget spent)."""

    jobs: int = 0
    batches: int = 0
    cutoff: float = 0.0  # jobs and batches that ended before this time were removed
    complete: bool = True


def purge_finished(
    store: JobStore,
    older_than_s: float,
    *,
    now: float | None = None,
    budget: int | None = None,
    chunk: int = PURGE_CHUNK,
) -> PurgeReport:
    """Remove every job and batch that ended more than `older_than_s` before `now` (one cut-off for the whole
    run), chunk by chunk, until none is left or `budget` jobs were removed (None: no budget)."""
    now = time.time() if now is None else now
    if not (math.isfinite(older_than_s) and math.isfinite(now)):  # NaN would match every job
        raise ValueError(f"a purge needs a finite age and time, got {older_than_s!r} and {now!r}")
    report = PurgeReport(cutoff=now - older_than_s)
    while True:
        limit = chunk if budget is None else min(chunk, budget - report.jobs)
        if limit < 1:
            report.complete = False
            return report
        purged = store.purge(older_than_s, now=now, limit=limit)
        report.jobs += purged.jobs
        report.batches += purged.batches
        if not purged.more or not (purged.jobs or purged.batches):
            # Done, or a full chunk of which nothing could go (batches whose jobs are not purgeable): stop there
            # rather than read the same chunk again.
            report.complete = not purged.more
            return report
