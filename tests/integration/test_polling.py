"""Polling against the simulator: the task-list watcher sends the poll of every task that ended, lists only when an
end is plausible, steps aside when the list fails; learned durations; the slot count adapts in throttle mode."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from config.accounts import AccountSettings
from config.catalogue import Kind
from ops.localstack import LocalStack
from producer.csv_source import CsvRow
from tests.conftest import SIM_KEY, RunningSimulator
from tests.stage_runner import batch_done, enqueue, publish_rows, run, wait_until
from workers.claimed import run_stage
from workers.dashscope.protocol import upstream_epoch
from workers.job import Action, Next, Status
from workers.poll import poll
from workers.quota.quota import Scope
from workers.runtime import Runtime
from workers.submit import submit
from workers.sweep import sweep
from workers.watch import InFlight, NextRound, _send_ended, in_flight, watch_round, watching

MODEL = "wan2.5-t2i-preview"
ACCOUNT = "default"


def rows(count: int, prefix: str = "j") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "prompt": f"{prefix} prompt {i}", "model": MODEL} for i in range(count)]


def submitted(rt: Runtime, count: int) -> list[Next]:
    """Enqueue `count` jobs and run their submits (waiting out the submit rate): their tasks are upstream;
    returns their first polls, not run."""
    polls = []
    for step in enqueue(rt, *rows(count)):
        following: Next | None = step
        while following is not None and following.action is Action.SUBMIT:
            time.sleep(following.delay_s)
            following = run_stage(submit, rt, following.ref, following.attempt)
        assert following is not None and following.action is Action.POLL
        polls.append(following)
    return polls


def all_ended(sim: RunningSimulator) -> bool:
    return all(t["status"] in {"SUCCEEDED", "FAILED"} for t in sim.engine.task_report(time.time()))


def test_the_watcher_sends_the_poll_of_each_ended_task_once_and_leaves_when_none_is_in_flight(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """One watcher per account; one list sends a poll (at the job's current attempt) for every task that ended,
    not again for the same attempt; the polls end the tasks; with nothing in flight the watcher leaves."""
    started: list[tuple[str, str]] = []
    sent: list[Next] = []
    runtime.start_watch = lambda account, token: started.append((account, token))
    runtime.send = lambda step: sent.append(step) if step else None
    submitted(runtime, 4)
    assert len(started) == 1  # the first submit started the account's watcher, the others found it
    assert not watching(runtime, ACCOUNT, time.time()) and len(started) == 1
    (_, token), attempts = started[0], {j.ref: j.attempt for j in runtime.store.jobs("b")}
    wait_until(lambda: all_ended(simulator), 10, "the simulator's tasks to end")

    assert watch_round(runtime, ACCOUNT, token) == NextRound(runtime.settings.watch_interval_s, 1)
    assert sorted((s.ref, s.attempt, s.action) for s in sent) == sorted(
        (r, a, Action.POLL) for r, a in attempts.items()
    )
    assert simulator.counters()["lists"] == 1
    assert watching(runtime, ACCOUNT, time.time())  # a good round: polls count on the watcher now

    assert watch_round(runtime, ACCOUNT, token, round_no=0) is None  # round 0's message delivered again: it stops
    time.sleep(0.3)  # past the lists' budget spacing, so the next round lists
    assert watch_round(runtime, ACCOUNT, token, round_no=1) is not None
    assert simulator.counters()["lists"] == 2
    assert len(sent) == 4  # the same attempts are not sent twice
    assert watch_round(runtime, ACCOUNT, "another-token", round_no=2) is None

    for step in list(sent):
        following: Next | None = step
        while following is not None and following.action is Action.POLL:  # a poll may wait for the query budget
            time.sleep(min(following.delay_s, 0.5))
            following = run_stage(poll, runtime, following.ref, following.attempt)
    assert {j.status for j in runtime.store.jobs("b")} == {Status.DOWNLOADING}
    assert watch_round(runtime, ACCOUNT, token, round_no=2) is None  # nothing in flight: it leaves the account
    assert runtime.watch_board.read(ACCOUNT).token is None


def test_the_watcher_does_not_list_before_any_task_can_have_ended(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """A scope whose tasks were seen to run a minute: right after the creates, the watcher sleeps, spending no query."""
    started: list[tuple[str, str]] = []
    runtime.start_watch = lambda account, token: started.append((account, token))
    for _ in range(20):
        runtime.durations.record(ACCOUNT, MODEL, run_s=60.0, queue_s=0.0, now=time.time())
    submitted(runtime, 2)
    following = watch_round(runtime, ACCOUNT, started[0][1])
    assert following is not None and following.delay_s > runtime.settings.watch_interval_s
    assert following.failures == 0
    assert simulator.counters().get("lists", 0) == 0


def test_a_failing_task_list_leaves_each_task_to_its_own_polls(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Every list answering 500: the watcher backs off and is not counted on, and the jobs still all succeed."""
    sim = simulator_factory(faults={"list_500": 1.0})
    rt = runtime_factory(dashscope_base_url=sim.base_url, result_hosts=(sim.url.removeprefix("http://"),))
    started: list[tuple[str, str]] = []
    rt.start_watch = lambda account, token: started.append((account, token))
    polls = submitted(rt, 3)
    wait_until(lambda: all_ended(sim), 10, "the simulator's tasks to end")
    first = watch_round(rt, ACCOUNT, started[0][1])
    time.sleep(0.3)  # past the lists' budget spacing, so the second round lists too
    second = watch_round(rt, ACCOUNT, started[0][1], round_no=1, failures=1)
    assert first is not None and first.failures == 1 and second is not None and second.failures == 2
    assert second.delay_s > first.delay_s
    assert not watching(rt, ACCOUNT, time.time())
    run(rt, polls, timeout_s=60)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 3
    assert sim.faults_fired()["list_500"] >= 2


def test_ended_tasks_teach_the_scope_its_run_and_queue_times(runtime: Runtime, simulator: RunningSimulator) -> None:
    """After a batch, the scope's learned run time is the simulator's own (from its timestamps), not the prior."""
    run(runtime, enqueue(runtime, *rows(12)), timeout_s=60)
    learned = runtime.durations.learned(ACCOUNT, MODEL, Kind.IMAGE, time.time())
    runs = sorted(t["end"] - t["scheduled"] for t in simulator.engine.task_report(time.time()) if "scheduled" in t)
    assert learned.run.learned
    if runs:  # the simulator reports when each task started running
        assert runs[0] * 0.8 <= learned.run.median_s <= runs[-1] * 1.2
    assert learned.run.median_s < 5.0  # the prior says 30 s; the fast profile's tasks take under 1.1 s


def test_throttle_mode_cuts_the_slot_count_after_a_429_instead_of_meeting_one_per_task(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """An account without a queue told 4 tasks at once where the service runs 2: a few 429s, not one per task."""
    sim = simulator_factory()
    sim.engine.configure(limits={MODEL: [5, 2]}, concurrency_mode="throttle")
    account = AccountSettings(
        name=ACCOUNT,
        api_keys=(SecretStr(SIM_KEY),),
        base_url=sim.base_url,
        limits={MODEL: (5, 4)},
        server_queue_depth=0,
    )
    rt = runtime_factory(
        accounts=(account,), dashscope_base_url=sim.base_url, result_hosts=(sim.url.removeprefix("http://"),)
    )
    run(rt, enqueue(rt, *rows(16)), timeout_s=120)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 16
    refused = sim.counters().get("throttled_concurrency", 0)
    assert 1 <= refused <= 4
    configured = account.limits_for(rt.settings.spec(MODEL)).slot_limit
    assert rt.quota.slot_limit(Scope(ACCOUNT, MODEL), configured, rt.settings.slot_probe_s, time.time()) <= 3


def test_workers_notice_ends_through_the_task_list(local_stack_factory: Callable[..., LocalStack]) -> None:
    """Real workers: every job is noticed within a few seconds of its end (per-task polls alone would first look
    ~18 s after a create, the prior's quarter), each task is queried about once, and the simulator served lists."""
    stack = local_stack_factory(workers=1)
    store, _ = publish_rows(stack, "watched", [CsvRow(i + 2, r) for i, r in enumerate(rows(10, "w"))])
    wait_until(batch_done(store, "watched"), 120, "the batch to finish")
    jobs = list(store.jobs("watched"))
    assert [j.status for j in jobs] == [Status.SUCCEEDED] * 10
    lags = [(j.results_at or 0) - (upstream_epoch(j.upstream.get("end_time", "")) or 0) for j in jobs]
    assert max(lags) < 5.0, lags
    counters = httpx.get(f"{stack.simulator_url}/_sim/counters", timeout=10).json()["counters"]
    assert counters["lists"] > 0
    assert counters["queries"] <= 2 * len(jobs)


def test_the_sweep_replaces_a_watcher_that_died(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A watcher whose lease lapsed (its worker died) is started again by the next sweep while tasks are in flight,
    and no watcher is started for an account with nothing in flight."""
    started: list[tuple[str, str]] = []
    runtime.start_watch = lambda account, token: started.append((account, token))
    sweep(runtime, lambda step: None)
    assert started == []
    submitted(runtime, 2)
    runtime.watch_board.leave(ACCOUNT, started[0][1])  # as if its lease had lapsed
    sweep(runtime, lambda step: None)
    assert len(started) == 2 and started[1][1] != started[0][1]
    assert runtime.watch_board.read(ACCOUNT).token == started[1][1]


def test_one_round_reads_every_page_so_the_oldest_tasks_are_seen(
    runtime: Runtime, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of two tasks: one round reads all three pages (newest first, each waiting for its query), so the
    oldest task's poll is sent too, not left to its safety poll."""
    monkeypatch.setattr("workers.watch.PAGE_SIZE", 2)
    started: list[tuple[str, str]] = []
    sent: list[Next] = []
    runtime.start_watch = lambda account, token: started.append((account, token))
    runtime.send = lambda step: sent.append(step) if step else None
    submitted(runtime, 5)
    wait_until(lambda: all_ended(simulator), 10, "the simulator's tasks to end")
    assert watch_round(runtime, ACCOUNT, started[0][1]) is not None
    assert sorted(s.ref for s in sent) == sorted(j.ref for j in runtime.store.jobs("b"))
    assert simulator.counters()["lists"] == 3


def test_a_list_that_disagrees_with_the_task_sends_its_poll_again_only_after_a_backoff(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """The list shows a task ended, its poll went and was answered otherwise (its attempt moved on, the job still
    polling): the next rounds do not send it again at once, only after 2 s, then 4 s."""
    sent: list[Next] = []
    runtime.send = lambda step: sent.append(step) if step else None
    submitted(runtime, 1)
    (flying,) = in_flight(runtime, ACCOUNT, time.time())
    statuses = {flying.job.task_id or "": "SUCCEEDED"}
    first = _send_ended(runtime, [flying], statuses, {}, 100.0)
    answered = InFlight(dataclasses.replace(flying.job, attempt=flying.job.attempt + 1), flying.earliest_end_at)
    again = _send_ended(runtime, [answered], statuses, first, 101.0)
    later = _send_ended(runtime, [answered], statuses, again, 102.5)
    assert [s.attempt for s in sent] == [flying.job.attempt, flying.job.attempt + 1]
    assert later[flying.job.ref].times == 2
    assert _send_ended(runtime, [answered], statuses, later, 104.0) == later  # not handled yet: nothing more
    answered_again = InFlight(dataclasses.replace(flying.job, attempt=flying.job.attempt + 2), flying.earliest_end_at)
    assert _send_ended(runtime, [answered_again], statuses, later, 106.0) == later  # 4 s this time
    assert _send_ended(runtime, [answered_again], statuses, later, 106.6)[flying.job.ref].times == 3
    assert len(sent) == 3


def test_an_account_with_a_queue_keeps_its_slots_whatever_429s_it_meets(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """An account that queues upstream, told a submit rate twice the real one: its rate 429s pause and slow the
    scope, but never cut its slots (a task beyond the concurrency would have waited in PENDING, not been refused)."""
    sim = simulator_factory()
    sim.engine.configure(limits={MODEL: [2, 2]})
    account = AccountSettings(
        name=ACCOUNT, api_keys=(SecretStr(SIM_KEY),), base_url=sim.base_url, limits={MODEL: (4, 2)}
    )
    rt = runtime_factory(
        accounts=(account,), dashscope_base_url=sim.base_url, result_hosts=(sim.url.removeprefix("http://"),)
    )
    run(rt, enqueue(rt, *rows(12)), timeout_s=120)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 12
    assert sim.counters().get("throttled_submit", 0) >= 1
    configured = account.limits_for(rt.settings.spec(MODEL)).slot_limit
    assert rt.quota.slot_limit(Scope(ACCOUNT, MODEL), configured, rt.settings.slot_probe_s, time.time()) == configured
