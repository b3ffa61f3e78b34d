"""The poll schedule as a pure function of what is known: prior only, learned durations, the budget, the deadline."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.catalogue import Kind
from config.settings import Settings
from workers.poll_policy import (
    AccountLoad,
    PollPolicy,
    TaskView,
    next_poll_delay_s,
    policy_for,
    poll_target,
)
from workers.quota.durations import PRIORS, QUEUE_PRIOR, Duration, Learned

IMAGE = PollPolicy(jitter=0.0)
PRIOR = Learned(run=PRIORS[Kind.IMAGE], queue=QUEUE_PRIOR)
#: A scope whose tasks were seen to run ~20 s (sigma 0.3) and never to wait.
LEARNED = Learned(run=Duration(20.0, 0.3, weight=40), queue=Duration(0.05, 0.1, weight=40))
FEW = AccountLoad(budget_qps=18.0, tasks_in_flight=5)


def running(elapsed_s: float, remaining_s: float = 600.0) -> TaskView:
    return TaskView(status="RUNNING", run_elapsed_s=elapsed_s, waited_s=elapsed_s, remaining_s=remaining_s)


def ended_by(learned: Learned, elapsed_s: float, delay_s: float) -> float:
    """The chance that a task running `elapsed_s` has ended within `delay_s` more."""
    run = learned.run
    return (run.cdf(elapsed_s + delay_s) - run.cdf(elapsed_s)) / (1 - run.cdf(elapsed_s))


def test_prior_only_places_the_first_poll_of_a_new_task_where_the_documented_durations_put_a_quarter_of_ends() -> None:
    """With nothing learned, a just-created task is first polled at the prior's 25 % quantile (images: ~17 s)."""
    task = TaskView(status="PENDING", run_elapsed_s=None, waited_s=0.0, remaining_s=600.0)
    delay = next_poll_delay_s(IMAGE, task, PRIOR, FEW)
    assert delay == pytest.approx(QUEUE_PRIOR.median_s + PRIORS[Kind.IMAGE].quantile(0.25), rel=1e-6)
    assert 15.0 < delay < 25.0


def test_a_running_task_is_not_polled_early_in_its_run_and_densely_near_its_likely_end() -> None:
    """Learned ~20 s runs: the first poll of a started task waits ~16 s; at 20 s into the run polls are ~1.5 s apart."""
    first = next_poll_delay_s(IMAGE, running(0.0), LEARNED, FEW)
    near_end = next_poll_delay_s(IMAGE, running(20.0), LEARNED, FEW)
    assert 14.0 < first < 18.0
    assert 0.5 <= near_end < 3.0
    for elapsed, delay in ((0.0, first), (20.0, near_end)):
        assert ended_by(LEARNED, elapsed, delay) == pytest.approx(IMAGE.target, abs=1e-6)


def test_a_pending_task_waits_for_the_learned_queue_time_before_its_run_can_end() -> None:
    """A scope whose tasks wait ~20 s in the queue: a pending task's poll waits out the queue and a quarter run."""
    queued = Learned(run=LEARNED.run, queue=Duration(20.0, 0.2, weight=40))
    task = TaskView(status="PENDING", run_elapsed_s=None, waited_s=5.0, remaining_s=600.0)
    delay = next_poll_delay_s(PollPolicy(jitter=0.0, cap_s=60.0), task, queued, FEW)
    assert delay == pytest.approx(15.0 + LEARNED.run.quantile(0.25), rel=1e-6)


def test_a_watched_account_polls_each_task_only_as_a_safety_net() -> None:
    """While the task list is watched, a running task is polled at a 98 % chance of an end, at most the cap apart."""
    watched = AccountLoad(budget_qps=16.0, tasks_in_flight=5, watched=True)
    assert poll_target(IMAGE, watched, LEARNED) == IMAGE.watched_target
    assert next_poll_delay_s(PollPolicy(jitter=0.0, cap_s=60.0), running(0.0), LEARNED, watched) == pytest.approx(
        LEARNED.run.quantile(0.98), rel=1e-6
    )
    assert next_poll_delay_s(IMAGE, running(0.0), PRIOR, watched) == IMAGE.cap_s


def polls_per_task(learned: Learned, load: AccountLoad, tasks: int = 4000) -> float:
    """Run tasks of the learned durations through the schedule (no jitter): the polls each got, on average."""
    rng, total = random.Random(3), 0
    for _ in range(tasks):
        ends_at, elapsed = rng.lognormvariate(math.log(learned.run.median_s), learned.run.sigma), 0.0
        while True:
            elapsed += next_poll_delay_s(PollPolicy(jitter=0.0, min_delay_s=0.01), running(elapsed), learned, load)
            total += 1
            if elapsed >= ends_at:
                break
    return total / tasks


def test_a_target_of_p_costs_one_poll_in_p() -> None:
    """Whatever the durations, a task polled at each chance p of an end costs 1 / p polls on average (4 at 0.25)."""
    assert polls_per_task(LEARNED, FEW) == pytest.approx(1 / IMAGE.target, rel=0.05)
    wide = Learned(run=Duration(40.0, 0.8, weight=40), queue=LEARNED.queue)
    assert polls_per_task(wide, FEW) == pytest.approx(1 / IMAGE.target, rel=0.05)


def test_many_tasks_on_one_budget_raise_the_target_so_the_polls_fit_the_budget() -> None:
    """200 tasks of ~20 s on 18 QPS afford ~1.9 polls per run each: simulated, that is about what each one costs."""
    crowded = AccountLoad(budget_qps=18.0, tasks_in_flight=200)
    mean_run_s = LEARNED.run.median_s * math.exp(LEARNED.run.sigma**2 / 2)
    affordable = 18.0 * mean_run_s / 200
    assert poll_target(IMAGE, crowded, LEARNED) == pytest.approx(1 / affordable)
    assert polls_per_task(LEARNED, crowded) == pytest.approx(affordable, rel=0.1)


def test_a_task_far_past_its_learned_runs_is_polled_ever_more_rarely() -> None:
    """A ~20 s task still running at 2 min, 5 min and an hour: polls back off (at least half the time since the
    99.9 % quantile, up to the cap), never one every half second."""
    q999 = LEARNED.run.quantile(0.999)
    policy = PollPolicy(jitter=0.0, cap_s=135.0)
    for elapsed in (120.0, 300.0, 3600.0):
        delay = next_poll_delay_s(policy, running(elapsed, remaining_s=10_000), LEARNED, FEW)
        assert delay >= min(policy.cap_s, 0.5 * (elapsed - q999))
    tight = Learned(run=Duration(6.0, 0.05, weight=40), queue=LEARNED.queue)  # the spread's floor
    assert next_poll_delay_s(policy, running(12.0, remaining_s=10_000), tight, FEW) >= 0.5 * (
        12.0 - tight.run.quantile(0.999)
    )


def test_a_skewed_service_clock_cannot_put_a_task_further_into_its_run_than_it_has_lived() -> None:
    """A scheduled_time far in our past (the service's clock behind ours) counts as no more than the time since the
    create: a 5 s old task is not taken for one a minute into its run."""
    skewed = TaskView(status="RUNNING", run_elapsed_s=60.0, waited_s=5.0, remaining_s=600.0)
    assert next_poll_delay_s(IMAGE, skewed, LEARNED, FEW) == next_poll_delay_s(IMAGE, running(5.0), LEARNED, FEW)


def test_a_starved_budget_still_polls_each_task_now_and_then() -> None:
    """Far more tasks than the budget can serve: the target stops at 99 % and the wait at the cap."""
    starved = AccountLoad(budget_qps=1.0, tasks_in_flight=10_000)
    assert poll_target(IMAGE, starved, LEARNED) == 0.99
    assert next_poll_delay_s(IMAGE, running(0.0), LEARNED, starved) <= IMAGE.cap_s


def test_the_last_poll_lands_on_the_deadline_not_after_it() -> None:
    """Whatever the schedule says, a poll is never later than the job's deadline (and never in the past)."""
    assert next_poll_delay_s(IMAGE, running(0.0, remaining_s=4.0), LEARNED, FEW) == 4.0
    assert next_poll_delay_s(IMAGE, running(0.0, remaining_s=-1.0), LEARNED, FEW) == 0.0


@given(
    elapsed=st.floats(0, 10_000, allow_nan=False),
    waited=st.floats(0, 10_000, allow_nan=False),
    status=st.sampled_from(["PENDING", "RUNNING", "", "SUSPENDED"]),
    median=st.floats(0.05, 5_000),
    sigma=st.floats(0.05, 3.0),
    tasks=st.integers(0, 100_000),
    qps=st.floats(0.1, 1_000),
    watched=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_finite_and_within_its_bounds(
    elapsed: float,
    waited: float,
    status: str,
    median: float,
    sigma: float,
    tasks: int,
    qps: float,
    watched: bool,
    seed: int,
) -> None:
    """For any task, distribution and load, the delay lies between the floor and the cap plus jitter, and an
    outlier's polls back off."""
    policy = PollPolicy()
    learned = Learned(run=Duration(median, sigma, weight=10), queue=Duration(median, sigma, weight=10))
    task = TaskView(status=status, run_elapsed_s=elapsed, waited_s=waited, remaining_s=600.0)
    delay = next_poll_delay_s(policy, task, learned, AccountLoad(qps, tasks, watched), random.Random(seed))
    assert math.isfinite(delay)
    assert policy.min_delay_s <= delay <= policy.cap_s * (1 + policy.jitter)
    beyond_s = min(elapsed, waited) - learned.run.quantile(0.999)
    if status == "RUNNING" and beyond_s > 0:  # an outlier backs off
        assert delay >= min(policy.cap_s, 0.5 * beyond_s) * (1 - policy.jitter)


def test_the_settings_choose_the_policy_per_kind() -> None:
    """`GENQ_POLL_*` settings reach the policy; the cap is the video one for video models."""
    settings = Settings(poll_target=0.4, poll_image_cap_s=20.0, poll_video_cap_s=90.0)
    assert policy_for(settings, Kind.IMAGE).cap_s == 20.0 and policy_for(settings, Kind.VIDEO).cap_s == 90.0
    assert policy_for(settings, Kind.VIDEO).target == 0.4
