"""When to poll a task next: a pure function of what is known about it, so it is tested without a clock.

A poll is worth its query when the task has likely ended since the last one. So the next poll of a task goes
when the chance that it has ended since now reaches a *target* `p`, read off the scope's learned run time
(`workers/quota/durations.py`):
- RUNNING, `a` seconds into its run: at the time `t` where `P(T <= t | T > a) = p`. Early in a run that is far
  off (no poll is spent where nothing can have happened); near the likely end, polls come densely. Past the
  scope's 99.9 % quantile a task is an outlier, and its polls back off (at least half the time since).
- PENDING (or just created): it cannot end before it starts and runs, so the wait is what is left of the
  scope's usual queue time plus the run's `p`-quantile. A task in the queue is polled rarely.

How many polls that costs does not depend on the distribution: each poll interval holds the end with chance
`p` (given that the task was still running at its start), so the polls up to the one that sees the end are
geometric, `1 / p` on average. The account's budget (`budget_qps` shared by `tasks_in_flight`) affords
`qps * mean_run / tasks` polls per task, so `p` is raised until that is enough: with few tasks the lag is small,
with many each task gets its share (the budget itself, a rate limiter, is never overspent whatever the schedule).

When the account's task list is being watched (`workers/watch.py`: one query tells which of many tasks ended,
and the watcher sends their poll at once), per-task polls are only a safety net: the target is
`watched_target`, still at most `cap_s` apart (the recovery sweep finds a job whose poll message was lost once
its poll is due, so the cap also bounds how long such a job waits).

Always: bounded jitter so a fleet's polls do not synchronise, never shorter than `min_delay_s`, at most the cap
(give or take the jitter), and never past the job's deadline (the last poll lands on it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from config.catalogue import Kind
from config.settings import Settings
from workers.quota.durations import Learned


@dataclass(frozen=True)
class PollPolicy:
    target: float = 0.25  # the chance that the task ended since the last poll at which the next one goes
    watched_target: float = 0.98  # the same while the account's task list is watched (polls are a safety net)
    min_delay_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.1  # +-10 %


@dataclass(frozen=True)
class TaskView:
    """What is known of one task at the moment its next poll is decided."""

    status: str  # the last answer's task_status ("" before the first query)
    run_elapsed_s: float | None  # since its scheduled_time (known once an answer said RUNNING)
    waited_s: float  # since it was created
    remaining_s: float  # until the job's deadline


@dataclass(frozen=True)
class AccountLoad:
    """The account's side: its query budget for task polls, how many tasks share it, whether a watcher lists."""

    budget_qps: float
    tasks_in_flight: int
    watched: bool = False


#: The target never rises above this: even a starved budget polls a task now and then.
MAX_TARGET = 0.99
#: A running task past this quantile of the learned run time is an outlier: its polls back off by `TAIL_BACKOFF`
#: times the time since (the log-normal's tail hazard says little about a task stuck for minutes).
TAIL_QUANTILE, TAIL_BACKOFF = 0.999, 0.5


def poll_target(policy: PollPolicy, load: AccountLoad, learned: Learned) -> float:
    """The chance of an end at which the next poll goes: the policy's, raised when the budget cannot afford it."""
    target = policy.watched_target if load.watched else policy.target
    mean_run_s = learned.run.median_s * math.exp(learned.run.sigma**2 / 2)
    affordable = load.budget_qps * mean_run_s / max(1, load.tasks_in_flight)  # polls per task over one run
    needed = 1 / affordable if affordable > 0 else MAX_TARGET  # the p at which 1 / p polls fit
    return min(MAX_TARGET, max(target, needed))


def next_poll_delay_s(
    policy: PollPolicy, task: TaskView, learned: Learned, load: AccountLoad, rng: random.Random | None = None
) -> float:
    """Seconds until the task's next poll."""
    p = poll_target(policy, load, learned)
    if task.status == "RUNNING" and task.run_elapsed_s is not None:
        # Measured from the service's clock: never more than the local time since the create (a skewed clock).
        elapsed = min(max(0.0, task.run_elapsed_s), max(0.0, task.waited_s))
        delay = learned.run.conditional_quantile(elapsed, p) - elapsed
        beyond_s = elapsed - learned.run.quantile(TAIL_QUANTILE)
        if beyond_s > 0:
            # Longer than the scope's tasks ever run: whatever the distribution says, wait longer each time.
            delay = max(delay, TAIL_BACKOFF * beyond_s)
    else:
        queue_left_s = max(0.0, learned.queue.median_s - task.waited_s)
        delay = queue_left_s + learned.run.quantile(p)
    delay = min(policy.cap_s, max(policy.min_delay_s, delay))
    spread = delay * policy.jitter
    delay = max(policy.min_delay_s, delay + (rng or random).uniform(-spread, spread))
    return max(0.0, min(delay, task.remaining_s))


def policy_for(settings: Settings, kind: Kind) -> PollPolicy:
    """The configured policy for a model kind (`GENQ_POLL_*`)."""
    return PollPolicy(
        target=settings.poll_target,
        watched_target=settings.poll_watched_target,
        min_delay_s=settings.poll_min_delay_s,
        cap_s=settings.poll_video_cap_s if kind is Kind.VIDEO else settings.poll_image_cap_s,
    )
