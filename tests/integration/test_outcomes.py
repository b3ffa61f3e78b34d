"""One test per outcome of a job, each driven by the simulator's fault switches, checked in the job store,
the bucket, the event stream and the simulator's own counters (which do not trust genq)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from config.accounts import AccountSettings
from ops.localstack.process import free_port
from ops.simulator.models import MODELS
from tests.conftest import SIM_KEY, RunningSimulator, raw_redis
from tests.stage_runner import enqueue, run
from workers import account_pause
from workers.claimed import run_stage
from workers.control import cancel, retry
from workers.dashscope import DashScopeClient
from workers.finalize import finalize, object_key
from workers.job import TASK_LIFE_S, Action, Job, Status
from workers.jobstore import keys
from workers.quota.quota import Scope
from workers.runtime import Runtime
from workers.submit import submit
from workers.sweep import sweep


def one_job(rt: Runtime, prompt: str, *, timeout_s: float = 30, **fields: str) -> Job:
    """Run one job with this prompt to its end; return it."""
    run(rt, enqueue(rt, {"id": "j", "prompt": prompt, **fields}), timeout_s=timeout_s)
    job = rt.store.get("b/j")
    assert job is not None
    return job


def aimed_at(sim: RunningSimulator) -> dict[str, Any]:
    """Runtime settings that send this test's creates, queries and downloads to `sim`, not the shared one."""
    return {"dashscope_base_url": sim.base_url, "result_hosts": (sim.url.removeprefix("http://"),)}


def in_status(rt: Runtime, status: Status, ref: str = "b/j") -> Callable[[], bool]:
    """A `run(..., until=)` condition: the job is in `status` now."""
    return lambda: (job := rt.store.get(ref)) is not None and job.status is status


def events(rt: Runtime) -> list[dict[str, object]]:
    return [json.loads(f["event"]) for _, f in raw_redis(rt.settings).xrange(rt.settings.event_stream)]


def test_transient_task_failure_is_resubmitted_and_then_succeeds(runtime: Runtime, simulator: RunningSimulator) -> None:
    """FAILED with InternalError.Timeout: genq creates the task again, and the second one succeeds."""
    job = one_job(runtime, "a cat sim:task_timeout:once")
    assert job.status is Status.SUCCEEDED and simulator.counters()["creates"] == 2
    assert simulator.faults_fired() == {"task_timeout": 1}


def test_permanent_task_failure_is_not_resubmitted(runtime: Runtime, simulator: RunningSimulator) -> None:
    """FAILED with DataInspectionFailed ends the job with the code at once; one task only."""
    job = one_job(runtime, "a cat sim:task_inspection")
    assert (job.status, job.error_code) == (Status.FAILED, "DataInspectionFailed")
    assert job.error_message and simulator.counters()["creates"] == 1
    assert simulator.faults_fired() == {"task_inspection": 1}


def test_partial_success_keeps_the_good_images(runtime: Runtime, simulator: RunningSimulator) -> None:
    """n=3 with failed sub-images: partially_succeeded, good images stored, failed indexes recorded."""
    job = one_job(runtime, "a cat sim:task_partial", n="3")
    assert job.status is Status.PARTIALLY_SUCCEEDED
    stored = {o["index"] for o in job.objects}
    failures = json.loads(raw_redis(runtime.settings).hget("genq:job:b/j", "failures"))  # type: ignore[arg-type]
    assert stored and {f["index"] for f in failures} == {0, 1, 2} - stored
    assert {f["code"] for f in failures} == {"InternalError.Timeout"}
    manifest = runtime.results.get_json("b/j/manifest.json")
    assert manifest is not None and manifest["failures"] == failures
    assert simulator.faults_fired() == {"task_partial": 1}


def test_fewer_images_than_asked_is_a_partial_success(runtime: Runtime, simulator: RunningSimulator) -> None:
    """wan2.6 answers a partial failure with fewer `choices` than `n` and no code: the job ends partially
    succeeded, naming each missing image, instead of passing for a full success."""
    job = one_job(runtime, "a cat sim:task_partial", n="3", model="wan2.6-t2i")
    assert job.status is Status.PARTIALLY_SUCCEEDED
    assert len(job.objects) + len(job.failures) == 3 and job.failures
    assert {f["code"] for f in job.failures} == {"ResultMissing"}
    assert all("of the 3 images asked for" in f["message"] for f in job.failures)
    assert simulator.faults_fired() == {"task_partial": 1}


def test_unknown_task_ends_expired_once_confirmed(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A task the service keeps answering UNKNOWN for (4 times over the confirmation window) ends the job
    expired, with the evidence (how often, over how long) on the job and in its message."""
    rt = runtime_factory(unknown_confirm_s=1.0)
    job = one_job(rt, "a cat sim:task_expire")
    assert (job.status, job.error_code) == (Status.EXPIRED, "TaskUnknown")
    assert job.unknown_seen >= 4 and job.unknown_first_at is not None
    assert f"UNKNOWN {job.unknown_seen} times" in (job.error_message or "")
    # UNKNOWN is not a final status: the task may still run (and bill) within its 24 h, so no retry, forced or not.
    report, follow = retry(rt, "b", force=True)
    assert report.changed == [] and follow == []
    assert "may still run upstream (last seen UNKNOWN)" in report.skipped["b/j"]
    assert simulator.faults_fired() == {"task_expire": 1} and simulator.counters()["creates"] == 1


def test_an_unknown_that_turns_back_into_running_is_not_believed(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A task answered UNKNOWN twice and then RUNNING/SUCCEEDED is followed to its result, not ended expired
    at first sight: the job succeeds with its image stored, and one task was created."""
    rt = runtime_factory(unknown_confirm_s=5.0)
    job = one_job(rt, "a cat sim:task_unknown_flap")
    assert job.status is Status.SUCCEEDED and len(job.objects) == 1
    assert simulator.counters()["creates"] == 1 and simulator.engine.snapshot(time.time())["billed_images"] == 1
    assert simulator.faults_fired() == {"task_unknown_flap": 1}


def test_a_task_that_succeeded_just_before_the_deadline_is_stored(runtime_factory: Callable[..., Runtime]) -> None:
    """The deadline passes between two polls while the task succeeds: the last query finds it SUCCEEDED and
    the (billed) image is stored; the job succeeds instead of timing out."""
    rt = runtime_factory(image_deadline_s=1.5)  # tasks take 0.3-1 s; the first poll comes 3 s after submit
    run(rt, enqueue(rt, {"id": "j", "prompt": "a cat"}), timeout_s=30, max_sleep_s=3.5)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED
    assert job.times["succeeded"] > job.deadline_at  # it really was past its deadline
    assert stored_images(rt) == ["b/j/0.png"]


def stored_images(rt: Runtime) -> list[str]:
    return sorted(k for k in rt.results.keys("b/") if k.endswith(".png"))


def test_deadline_cancels_a_pending_task_and_waits_for_running_ones(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Past the deadline, the job whose task still waits upstream is cancelled there and ends timed_out (nothing
    billed); the two whose tasks run (and will be billed) turn overdue with one event each, keep polling, and
    end succeeded with their images stored; every billed image is in the bucket, and `retry` then revives the
    job whose task was cancelled (nothing of it could run or bill), which is billed once in all."""
    sim = simulator_factory(time_scale=15.0)  # 4.5-15 s per task: two run, one waits, past a 3 s deadline
    rt = runtime_factory(
        **aimed_at(sim),
        image_deadline_s=3.0,
        overdue_poll_s=1.0,
    )
    steps = enqueue(rt, *({"id": f"j{i}", "prompt": f"p{i}", "model": "wanx2.0-t2i-turbo"} for i in range(3)))
    run(rt, steps, timeout_s=60, max_sleep_s=0.5)
    jobs = {j.job_id: j for j in rt.store.jobs("b")}
    statuses = sorted(j.status.value for j in jobs.values())
    assert statuses == ["succeeded", "succeeded", "timed_out"], statuses
    (late,) = [j for j in jobs.values() if j.status is Status.TIMED_OUT]
    assert late.task_status == "CANCELED" and "nothing billed" in (late.error_message or "")
    overdue = [e for e in events(rt) if e["type"] == "genq.job.overdue"]
    assert sorted(str(e["subject"]) for e in overdue) == sorted(j.ref for j in jobs.values() if j is not late)
    counters = sim.engine.snapshot(time.time())
    assert counters["counters"]["cancels"] == 1 and counters["counters"]["creates"] == 3
    assert counters["billed_images"] == len(stored_images(rt)) == 2
    report, follow = retry(rt, "b")
    assert report.changed == [late.ref]  # its task was cancelled: nothing of it can run or bill
    run(rt, follow, timeout_s=60, max_sleep_s=0.5)
    retried = rt.store.get(late.ref)
    assert retried is not None and retried.status is Status.SUCCEEDED
    # One new task, for the job whose first task was cancelled before it ran: billed once in all.
    after = sim.engine.snapshot(time.time())
    assert after["counters"]["creates"] == 4 and after["billed_images"] == len(stored_images(rt)) == 3


def test_a_cancel_at_the_deadline_that_is_throttled_failing_or_refused_is_tried_again(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Two long tasks run and one waits upstream past a 2.5 s deadline. Its cancel is answered 429, then 503: each is
    "try again shortly", not an escape. Then it is refused every time although the task is PENDING: after 3
    refusals it is taken for started, the job turns overdue (never resubmitted), and its result is stored when
    it ends. Every billed image is stored; nothing is created twice."""
    # 2 at once for this model; the two running tasks are long (15-50 s), so the third surely stays PENDING
    # through its cancel's tries (about 8 s, with room for a loaded machine), and itself takes 1.5-5 s.
    sim = simulator_factory(time_scale=5.0)
    rt = runtime_factory(
        **aimed_at(sim),
        image_deadline_s=2.5,  # time for the third create to go out (creates are spaced), not for a task to end
        overdue_poll_s=1.0,
    )
    prompts = ["p0 sim:task_long", "p1 sim:task_long", "p2 sim:cancel_429:once sim:cancel_503:once sim:cancel_refused"]
    rows = [{"id": f"j{i}", "prompt": p, "model": "wanx2.0-t2i-turbo"} for i, p in enumerate(prompts)]

    def long_ones_created() -> bool:  # creates are spaced and jittered: the third must surely go out last
        return all(j.task_id for j in rt.store.jobs("b"))

    left = run(rt, enqueue(rt, *rows[:2]), timeout_s=20, max_sleep_s=0.5, until=long_ones_created)
    run(rt, left + enqueue(rt, rows[2]), timeout_s=90, max_sleep_s=0.5)
    late = rt.store.get("b/j2")
    assert late is not None and late.status is Status.SUCCEEDED and "overdue" in late.times
    assert late.cancel_refusals == 2  # the third refusal turned it overdue
    assert sim.faults_fired() == {"cancel_429": 1, "cancel_503": 1, "cancel_refused": 3, "task_long": 2}
    counters = sim.engine.snapshot(time.time())
    assert counters["counters"].get("cancels", 0) == 0 and counters["counters"]["creates"] == 3
    assert counters["billed_images"] == len(stored_images(rt)) == 3


def test_retry_leaves_alone_a_job_whose_task_may_still_run(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """`retry --force` on a batch whose job is past its deadline while its task runs upstream (overdue) leaves
    that job alone and says why; nothing more is created upstream, and the job goes on to store its result."""
    sim = simulator_factory(time_scale=15.0)  # 4.5-15 s per task, far past a 1 s deadline
    rt = runtime_factory(
        **aimed_at(sim),
        image_deadline_s=1.0,
        overdue_poll_s=0.5,
    )
    steps = enqueue(rt, {"id": "j", "prompt": "p", "model": "wanx2.0-t2i-turbo"})

    overdue = in_status(rt, Status.OVERDUE)

    left = run(rt, steps, timeout_s=20, max_sleep_s=0.2, until=overdue)
    assert overdue()
    report, follow = retry(rt, "b", force=True)
    assert report.changed == [] and follow == []
    assert report.skipped["b/j"].startswith("overdue: its task still runs upstream")
    run(rt, left, timeout_s=30, max_sleep_s=0.5)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and stored_images(rt) == ["b/j/0.png"]
    assert sim.counters()["creates"] == 1 and sim.engine.snapshot(time.time())["billed_images"] == 1


def test_a_task_whose_queries_keep_failing_is_followed_until_it_answers(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """Queries that fail past `poll_max_errors` do not end the job while its task may still run (and bill): it
    keeps being polled, every `overdue_poll_s`; when the service answers again, the billed image is stored."""
    rt = runtime_factory(poll_max_errors=2, overdue_poll_s=0.5)
    simulator.engine.configure(faults={"query_503": 1.0})
    steps = enqueue(rt, {"id": "j", "prompt": "a cat"})

    def failing_long() -> bool:
        job = rt.store.get("b/j")
        return job is not None and job.poll_errors >= 4

    left = run(rt, steps, timeout_s=30, until=failing_long)
    job = rt.store.get("b/j")
    assert job is not None and not job.terminal, "the job gave up on a task that may still run"
    assert [step.delay_s for step in left] == [0.5]  # polled every overdue_poll_s from now on
    simulator.engine.configure(faults={"query_503": 0.0})
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and stored_images(rt) == ["b/j/0.png"]
    assert simulator.engine.snapshot(time.time())["billed_images"] == 1
    assert simulator.faults_fired()["query_503"] >= 4


def test_a_task_unreachable_past_its_24_h_life_ends_the_job_failed(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """Once the task's 24 h life upstream is over (clock moved on), a query that still fails ends the job failed
    with the error and how many polls failed: its result could no longer be fetched."""
    rt = runtime_factory(poll_max_errors=2)
    simulator.engine.configure(faults={"query_503": 1.0})
    steps = enqueue(rt, {"id": "j", "prompt": "a cat"})
    left = run(rt, steps, timeout_s=30, until=lambda: bool((j := rt.store.get("b/j")) and j.task_id))
    rt.clock = lambda: time.time() + TASK_LIFE_S
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and (job.status, job.error_code) == (Status.FAILED, "ModelServingError")
    assert "the task's 24 h life upstream is over" in (job.error_message or "")


def test_an_account_error_during_a_poll_pauses_the_account_and_keeps_the_job(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A query refused for the account (a revoked key) pauses the account for every job, with one event, but
    does not end the job whose task runs upstream: once the key works again, its result is stored."""
    rt = runtime_factory(overdue_poll_s=0.5)
    steps = enqueue(rt, {"id": "j", "prompt": "a cat"})
    left = run(rt, steps, timeout_s=30, until=lambda: bool((j := rt.store.get("b/j")) and j.task_id))
    revoked = runtime_factory(overdue_poll_s=0.5)
    revoked.dashscope = DashScopeClient(revoked.downloads, base_url=revoked.settings.base_url, api_key="revoked")
    left = run(revoked, left, timeout_s=5, until=lambda: account_pause.paused(rt.store, "default") is not None)
    job = rt.store.get("b/j")
    assert job is not None and not job.terminal and left
    paused = [e for e in events(rt) if e["type"] == "genq.account.paused"]
    assert len(paused) == 1 and "InvalidApiKey" in json.dumps(paused[0])
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and stored_images(rt) == ["b/j/0.png"]


def test_cancel_stops_a_batch_and_cancels_upstream(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """genq cancel: jobs whose tasks are queued upstream are cancelled there and end canceled, and their messages
    still in flight do nothing; a job whose task already runs upstream (it cannot be cancelled, and bills) is
    left to finish, saying so, and is still polled."""
    sim = simulator_factory(time_scale=30.0)
    rt = runtime_factory(**aimed_at(sim))
    steps = enqueue(rt, *({"id": f"j{i}", "prompt": f"p{i}", "model": "wanx2.0-t2i-turbo"} for i in range(3)))
    left = run(rt, steps, timeout_s=3, max_sleep_s=0.5)
    report = cancel(rt, "b")
    running = {ref for ref, why in report.skipped.items() if why.startswith("its task already runs upstream")}
    assert set(report.skipped) == running and sorted([*report.changed, *running]) == ["b/j0", "b/j1", "b/j2"]
    assert report.upstream_canceled >= 1 and sim.counters()["cancels"] >= 1
    run(rt, left, timeout_s=5)  # the cancelled jobs' messages are stale; the running ones' polls go on
    for job in rt.store.jobs("b"):
        if job.ref in running:
            assert job.status in (Status.SUBMITTED, Status.RUNNING) and job.next_action is Action.POLL, job
        else:
            assert job.status is Status.CANCELED, job


def test_cancel_never_lets_a_freed_slot_start_a_job_it_has_yet_to_cancel(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """One slot, one running job and two waiting, and workers that act on what is admitted at once (here: the
    submit runs the moment it is sent): cancelling the batch ends the two waiting jobs and admits none of them
    into a slot; the running job is left to finish (its task cannot be cancelled and bills): one task upstream
    in all."""
    sim = simulator_factory(time_scale=30.0)
    account = AccountSettings(
        name="default",
        api_keys=(SecretStr(SIM_KEY),),
        base_url=sim.base_url,
        limits={"wanx2.0-t2i-turbo": (5, 1)},
        server_queue_depth=0,  # one job holding a slot at a time, none queued upstream
    )
    rt = runtime_factory(accounts=(account,), result_hosts=(sim.url.removeprefix("http://"),))
    steps = enqueue(rt, *({"id": f"j{i}", "prompt": f"p{i}", "model": "wanx2.0-t2i-turbo"} for i in range(3)))
    left = run(rt, steps, timeout_s=2, max_sleep_s=0.5)
    assert sim.counters()["creates"] == 1
    rt.send = lambda step: run_stage(submit, rt, step.ref, step.attempt) if step else None  # an eager worker
    report = cancel(rt, "b")
    (running,) = [j.ref for j in rt.store.jobs("b") if j.task_id]
    assert sorted(report.changed) == sorted({"b/j0", "b/j1", "b/j2"} - {running})
    assert report.skipped[running].startswith("its task already runs upstream")  # left to finish: it bills
    assert {step.ref for step in run(rt, left, timeout_s=3)} <= {running}
    assert [j.status for j in rt.store.jobs("b") if j.ref != running] == [Status.CANCELED] * 2
    assert sim.counters()["creates"] == 1  # the running job's task only: nothing admitted after it


def test_cancel_leaves_alone_what_it_must_and_says_why(runtime_factory: Callable[..., Runtime]) -> None:
    """`genq cancel batch/job`, one job at a time: a job whose task already succeeded upstream (refused cancel,
    then a query) is left to store its billed result; one whose cancel is answered 429 is left polling (its task
    may still be PENDING); one whose create's answer was lost is left to its reconciliation. Each reason is
    given, and all three jobs then succeed with one task each."""
    rt = runtime_factory(http_timeout_s=0.5)
    prompts = {"s": "a cat", "t": "a dog sim:cancel_429", "p": "a fox sim:create_drop_after:once"}
    steps = enqueue(rt, *({"id": job_id, "prompt": prompt} for job_id, prompt in prompts.items()))

    def sent() -> bool:  # each create sent (the first poll comes 3 s after: nobody has asked about a task yet)
        return all(j.task_id or j.create_pending for j in rt.store.jobs("b"))

    left = run(rt, steps, timeout_s=10, until=sent)
    time.sleep(1.5)  # the tasks (0.3-1 s here) have succeeded upstream
    reasons = {ref: cancel(rt, ref).skipped.get(ref, "") for ref in ("b/s", "b/t", "b/p")}
    assert reasons["b/s"] == "its task has already succeeded upstream (billed): its result is stored"
    assert reasons["b/t"] == "the service could not cancel its task now (Throttling); try again"
    assert reasons["b/p"].startswith("a create is in flight")
    run(rt, left, timeout_s=30)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 3
    assert raw_redis(rt.settings).exists(keys.job("b/s")) and len(stored_images(rt)) == 3


def test_a_task_list_unreadable_for_the_tasks_whole_life_ends_the_job_failed(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A lost create whose task list cannot be read (every list answered 429) is never sent again; once the 24 h
    a task of it could live have passed (clock moved on), the job ends failed saying so."""
    rt = runtime_factory(http_timeout_s=0.5)
    steps = enqueue(rt, {"id": "j", "prompt": "a sim:create_drop_before:once"})
    left = run(rt, steps, timeout_s=10, until=lambda: _create_pending(rt))
    simulator.engine.config.query_qps = 0  # every query and list is refused with 429 from now on
    rt.clock = lambda: time.time() + TASK_LIFE_S
    assert run(rt, left, timeout_s=20) == []
    job = rt.store.get("b/j")
    assert job is not None and (job.status, job.error_code) == (Status.FAILED, "Throttling")
    assert "the task list could not be read for 24 h" in (job.error_message or "")
    assert simulator.counters().get("creates", 0) == 0 and simulator.counters()["throttled_query"] >= 1


def test_create_timeout_is_reconciled_not_paid_twice(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """A create that timed out did create a task: genq finds it through the task list and adopts it."""
    sim = simulator_factory(slow_response_s=2.0)
    rt = runtime_factory(**aimed_at(sim), http_timeout_s=0.5)
    job = one_job(rt, "a cat sim:create_slow:once")
    assert job.status is Status.SUCCEEDED
    assert sim.counters()["creates"] == 1 and sim.counters()["lists"] >= 1
    assert sim.faults_fired() == {"create_slow": 1}


def test_reconciliation_waits_out_an_unreadable_task_list(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """When the task list answers 429 while a lost create is being reconciled, the submit comes back later
    instead of failing or sending the create again, and then adopts the task the lost create made."""
    sim = simulator_factory()
    rt = runtime_factory(**aimed_at(sim), http_timeout_s=0.5)
    steps = enqueue(rt, {"id": "j", "prompt": "a sim:create_malformed:once"})
    left = run(rt, steps, timeout_s=10, until=lambda: _create_pending(rt))
    sim.engine.config.query_qps = 0  # every query and list is refused with 429 from now on
    left = run(rt, left, timeout_s=4)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUBMITTING and job.create_pending  # waiting, not failed
    assert sim.counters()["creates"] == 1 and sim.counters()["throttled_query"] >= 1
    sim.engine.config.query_qps = 20
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED
    assert sim.counters()["creates"] == 1  # the lost create's task was adopted, never created twice
    assert sim.faults_fired() == {"create_malformed": 1}


def test_a_task_owned_by_its_own_job_is_adopted(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """A worker that died right after recording a created task's owner, before recording the task in the job,
    leaves a create pending whose task is already owned by that same job: reconciliation adopts it rather than
    creating a second one."""
    sim = simulator_factory()
    rt = runtime_factory(**aimed_at(sim), http_timeout_s=0.5)
    left = run(
        rt,
        enqueue(rt, {"id": "j", "prompt": "a sim:create_malformed:once"}),
        timeout_s=10,
        until=lambda: _create_pending(rt),
    )
    (task_id,) = sim.engine.tasks
    raw_redis(rt.settings).set(keys.task_owner(task_id), "b/j")  # what the dead worker had already written
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and job.task_id == task_id
    assert sim.counters()["creates"] == 1 and sim.faults_fired() == {"create_malformed": 1}


def _create_pending(rt: Runtime) -> bool:
    job = rt.store.get("b/j")
    return job is not None and job.create_pending and job.submit_failed_at is not None


def test_dropped_creates_are_reconciled_either_way(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Cut before the task existed: sent again. Cut after it existed, or garbled: adopted. One task per job."""
    sim = simulator_factory()
    rt = runtime_factory(**aimed_at(sim), http_timeout_s=0.5)
    prompts = ["a sim:create_drop_before:once", "b sim:create_drop_after:once", "c sim:create_malformed:once"]
    run(rt, enqueue(rt, *({"id": f"j{i}", "prompt": p} for i, p in enumerate(prompts))), timeout_s=30)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 3
    assert sim.counters()["creates"] == 3 and sim.engine.snapshot(time.time())["duplicate_creates"] == 0
    assert sim.faults_fired() == {"create_drop_before": 1, "create_drop_after": 1, "create_malformed": 1}


def test_throttling_and_server_errors_are_retried(runtime: Runtime, simulator: RunningSimulator) -> None:
    """429 and 5xx on create and on query, and a garbled query answer, each delay the job but it succeeds."""
    prompts = [
        "a sim:burst:once",
        "b sim:create_500:once",
        "c sim:create_503:once",
        "d sim:query_429:once",
        "e sim:query_503:once",
        "f sim:query_malformed:once",
        "g sim:query_drop:once",
    ]
    run(runtime, enqueue(runtime, *({"id": f"j{i}", "prompt": p} for i, p in enumerate(prompts))), timeout_s=30)
    jobs = list(runtime.store.jobs("b"))
    assert [j.status for j in jobs] == [Status.SUCCEEDED] * len(prompts)
    assert jobs[0].throttles == 1 and jobs[1].submit_errors == jobs[2].submit_errors == 1 and jobs[3].throttles == 1
    assert simulator.counters()["creates"] == len(prompts)
    assert simulator.faults_fired() == {
        "burst": 1,
        "create_500": 1,
        "create_503": 1,
        "query_429": 1,
        "query_503": 1,
        "query_malformed": 1,
        "query_drop": 1,
    }


def test_account_error_pauses_the_account_for_every_job(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A refused key fails that job, pauses the account (logged, event), and the other jobs wait without
    sending anything; after `resume` and a good key, a retry finishes the batch."""
    bad = runtime_factory()
    bad.dashscope = DashScopeClient(bad.downloads, base_url=bad.settings.base_url, api_key="revoked-key")
    steps = enqueue(bad, {"id": "first", "prompt": "a"}, {"id": "second", "prompt": "b"})
    run(bad, steps[:1], timeout_s=10)
    pause = account_pause.paused(bad.store, bad.settings.account)
    assert pause is not None and pause["code"] == "InvalidApiKey"
    assert [e["type"] for e in events(bad)] == ["genq.account.paused", "genq.job.failed"]
    left = run(bad, steps[1:], timeout_s=1.0)
    second = bad.store.get("b/second")
    assert second is not None and second.status is Status.SUBMITTING and second.submits == 0 and left

    good = runtime_factory()
    assert account_pause.resume(good.store, good.settings.account)
    run(good, left, timeout_s=20)
    report, again = retry(good, "b")
    assert report.changed == ["b/first"]
    run(good, again, timeout_s=20)
    assert [j.status for j in good.store.jobs("b")] == [Status.SUCCEEDED, Status.SUCCEEDED]
    assert simulator.counters()["creates"] == 2


def test_a_lost_create_is_reconciled_while_the_account_is_paused(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A create whose answer was lost after its task existed is reconciled even though the account was paused
    meanwhile (listing creates nothing): the task is adopted, followed and its billed image stored; nothing
    more is created, and the account stays paused for new creates."""
    rt = runtime_factory(http_timeout_s=0.5)
    steps = enqueue(rt, {"id": "j", "prompt": "a cat sim:create_drop_after:once"})
    left = run(rt, steps, timeout_s=10, until=lambda: bool((j := rt.store.get("b/j")) and j.create_pending))
    account_pause.pause(rt.store, rt.settings.account, code="Arrearage", message="payment overdue", now=time.time())
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and stored_images(rt) == ["b/j/0.png"]
    assert simulator.counters()["creates"] == 1 and simulator.engine.snapshot(time.time())["billed_images"] == 1
    assert simulator.faults_fired() == {"create_drop_after": 1}
    assert account_pause.paused(rt.store, rt.settings.account) is not None


def test_retry_skips_permanent_failures_unless_forced(runtime: Runtime, simulator: RunningSimulator) -> None:
    """genq retry --failed leaves content-moderation failures alone; --force retries them too."""
    one_job(runtime, "a cat sim:task_inspection")
    assert simulator.faults_fired() == {"task_inspection": 1}
    report, steps = retry(runtime, "b")
    assert report.changed == [] and "permanent" in report.skipped["b/j"] and steps == []
    report, steps = retry(runtime, "b", force=True)
    assert report.changed == ["b/j"] and len(steps) == 1


def test_every_terminal_job_emits_exactly_one_event(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A mix of outcomes: one job event per terminal job, each with a distinct id, plus one batch event."""
    runtime = runtime_factory(unknown_confirm_s=1.0)
    prompts = ["ok", "x sim:task_inspection", "y sim:task_expire", "z sim:create_inspection"]
    run(runtime, enqueue(runtime, *({"id": f"j{i}", "prompt": p} for i, p in enumerate(prompts))), timeout_s=30)
    seen = events(runtime)
    job_events = [e for e in seen if str(e["type"]).startswith("genq.job.")]
    assert sorted(e["subject"] for e in job_events) == [f"b/j{i}" for i in range(4)]  # type: ignore[type-var]
    assert len({e["id"] for e in job_events}) == 4
    assert [e["type"] for e in seen].count("genq.batch.finished") == 1
    assert simulator.faults_fired() == {"task_inspection": 1, "task_expire": 1, "create_inspection": 1}


def test_an_unparseable_result_url_is_refused_not_a_crash_loop(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A result URL that urllib reads as the allowed host but httpx cannot parse (`evil.example\\t@host`) is
    refused as `ResultUrlMalformed`: the job ends failed at once, nothing is downloaded, no stage crashed."""
    job = one_job(runtime, "a cat sim:url_unparseable")
    assert (job.status, job.error_code) == (Status.FAILED, "ResultUrlMalformed")
    assert raw_redis(runtime.settings).hget(keys.job(job.ref), "stage_crashes") is None
    assert simulator.counters().get("downloads", 0) == 0 and simulator.faults_fired() == {"url_unparseable": 1}


def test_a_stage_that_keeps_crashing_ends_the_job_failed_with_the_reason(runtime: Runtime) -> None:
    """A download that raises something nobody foresaw (here the HTTP transport itself raising RuntimeError) is
    retried like a dead worker's step: while the paid results' URLs live, however often it crashes; once they
    are dead, at the third crash the job ends failed with `InternalError`, the exception's type and message,
    and one terminal event. It never loops forever."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the transport broke")

    left = run(runtime, enqueue(runtime, {"id": "j", "prompt": "a cat"}), until=lambda: _downloading(runtime))
    assert len(left) == 1
    crashing = replace(runtime, downloads=httpx.Client(transport=httpx.MockTransport(broken)))
    for _ in range(4):  # URLs alive: the billed results are tried again, not thrown away
        job = crashing.store.get("b/j")
        assert job is not None and job.status is Status.DOWNLOADING
        with pytest.raises(RuntimeError, match="the transport broke"):
            run_stage(finalize, crashing, job.ref, job.attempt)
    expired = replace(crashing, settings=crashing.settings.model_copy(update={"result_url_life_s": 0.0}))
    job = expired.store.get("b/j")
    assert job is not None and job.status is Status.DOWNLOADING  # 5 crashes, and still not given up
    assert run_stage(finalize, expired, job.ref, job.attempt) is None
    job = expired.store.get("b/j")
    assert job is not None and (job.status, job.error_code) == (Status.FAILED, "InternalError")
    assert job.error_message is not None and job.error_message.startswith("RuntimeError: the transport broke")
    assert [e["type"] for e in events(runtime)].count("genq.job.failed") == 1


def _downloading(rt: Runtime) -> bool:
    job = rt.store.get("b/j")
    return job is not None and job.status is Status.DOWNLOADING


def test_reconciliation_never_takes_a_task_another_create_is_still_waiting_for(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Job b's create is lost on its way in (no task; it times out after 3.5 s). Job a's create, sent 3 s after
    b's, makes its task at once (inside b's window) but is answered only 3 s later, after b's reconciliation is
    due. The service's clock runs 2 s behind genq's (more than the 1 s skew allowed), so a's task looks created
    before a's create was sent, and only the wait for creates in flight keeps b from it: b waits for a's answer
    instead of adopting a's still unowned task. Each job follows the task of its own prompt, each owner was taken
    once, and b's create is sent again."""
    sim = simulator_factory(slow_response_s=3.0)
    sim.engine.clock = lambda: time.time() - 2.0
    settings = {
        **aimed_at(sim),
        "http_timeout_s": 3.5,
        "reconcile_clock_skew_s": 1.0,  # wide margins for a loaded machine; the windows stay as described
    }
    first, second = runtime_factory(**settings), runtime_factory(**settings)
    steps = enqueue(first, {"id": "b", "prompt": "b sim:create_hang:once"}, {"id": "a", "prompt": "a sim:create_slow"})
    step_a, step_b = sorted(steps, key=lambda step: step.ref)

    def later() -> None:
        time.sleep(3.0)
        run(second, [step_a], timeout_s=40)

    other = threading.Thread(target=later)
    other.start()
    run(first, [step_b], timeout_s=40)
    other.join(50)
    a, b = first.store.get("b/a"), first.store.get("b/b")
    assert a is not None and b is not None and a.status is b.status is Status.SUCCEEDED
    assert a.task_id != b.task_id
    assert first.store.task_owner(a.task_id or "") == "b/a" and first.store.task_owner(b.task_id or "") == "b/b"
    prompts = {t["task_id"]: t["prompt"] for t in sim.engine.task_report(time.time())}
    assert prompts[a.task_id or ""].startswith("a ") and prompts[b.task_id or ""].startswith("b ")
    assert sim.counters()["creates"] == 2 and b.submits == 2
    assert sim.faults_fired() == {"create_hang": 1, "create_slow": 1}


def test_give_up_on_a_create_that_keeps_failing_transiently(runtime_factory: Callable[..., Runtime]) -> None:
    """Creates answered 500 every time are retried with backoff, and after `submit_max_attempts` the job ends
    failed with the code and the count; no task was ever created."""
    rt = runtime_factory(submit_max_attempts=2)
    job = one_job(rt, "a cat sim:create_500")
    assert (job.status, job.error_code) == (Status.FAILED, "InternalError")
    assert "gave up after 2 attempts" in (job.error_message or "")
    counters = rt_counters(rt)
    assert counters.get("creates", 0) == 0


def rt_counters(rt: Runtime) -> dict[str, int]:
    """The simulator's own counters, over HTTP, for the simulator this runtime talks to."""
    base = rt.settings.dashscope_base_url or ""
    return dict(httpx.get(base.removesuffix("/api/v1") + "/_sim/counters", timeout=10).json()["counters"])


def test_give_up_on_creates_that_never_get_an_answer_and_make_no_task(runtime_factory: Callable[..., Runtime]) -> None:
    """Every create's connection drops before the service made a task: each is reconciled (nothing found) and
    sent again only while attempts remain, with a backoff; after `submit_max_attempts` the job ends failed
    saying so. No task was ever made; no create went out without its reconciliation first."""
    rt = runtime_factory(submit_max_attempts=2, http_timeout_s=0.5)
    job = one_job(rt, "a cat sim:create_drop_before", timeout_s=60)
    assert (job.status, job.error_code) == (Status.FAILED, "CreateUnanswered")
    assert "2 creates got no usable answer" in (job.error_message or "")
    assert raw_redis(rt.settings).hget(keys.job("b/j"), "submits") == "2"


def test_give_up_resubmitting_a_task_that_keeps_failing_transiently(runtime_factory: Callable[..., Runtime]) -> None:
    """Tasks that end FAILED with InternalError.Timeout every time are resubmitted until `submit_max_attempts`
    creates were made, then the job ends failed with that code: two tasks, no more."""
    rt = runtime_factory(submit_max_attempts=2)
    job = one_job(rt, "a cat sim:task_timeout")
    assert (job.status, job.error_code, job.submits) == (Status.FAILED, "InternalError.Timeout", 2)
    assert rt_counters(rt)["creates"] == 2


def test_a_deadline_passed_before_submit_sends_nothing(runtime_factory: Callable[..., Runtime]) -> None:
    """A job whose deadline passed while it waited to be submitted ends timed_out without any create."""
    rt = runtime_factory(image_deadline_s=0.001)
    job = one_job(rt, "a cat")
    assert (job.status, job.error_code) == (Status.TIMED_OUT, "DeadlineExceeded")
    assert "before submit" in (job.error_message or "") and job.submits == 0
    assert rt_counters(rt).get("creates", 0) == 0


def test_a_task_canceled_upstream_ends_the_job_canceled(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """A task cancelled upstream by someone else (the console, another tool) while it waited ends its job
    canceled with the reason, nothing stored, and the other jobs go on."""
    sim = simulator_factory(time_scale=30.0)  # 9-30 s per task on a 2-slot model: the third one waits
    rt = runtime_factory(**aimed_at(sim))
    steps = enqueue(rt, *({"id": f"j{i}", "prompt": f"p{i}", "model": "wanx2.0-t2i-turbo"} for i in range(3)))

    def all_submitted() -> bool:
        return all(j.task_id for j in rt.store.jobs("b")) and len(list(rt.store.jobs("b"))) == 3

    left = run(rt, steps, timeout_s=20, until=all_submitted)
    pending = [t["task_id"] for t in sim.engine.task_report(time.time()) if t["status"] == "PENDING"]
    assert len(pending) == 1
    canceled = httpx.post(f"{sim.base_url}/tasks/{pending[0]}/cancel", headers={"Authorization": f"Bearer {SIM_KEY}"})
    assert canceled.status_code == 200, canceled.text

    def gone_ended() -> bool:
        return any(j.terminal for j in rt.store.jobs("b") if j.task_id == pending[0])

    run(rt, left, timeout_s=60, until=gone_ended)  # not the others' ends: 9-30 s that would show nothing more
    jobs = {j.task_id: j for j in rt.store.jobs("b")}
    gone = jobs.pop(pending[0])
    assert (gone.status, gone.error_code) == (Status.CANCELED, "Canceled") and not gone.objects
    # The others go on: still followed upstream (or already done), none touched by the cancel.
    ended_badly = {Status.CANCELED, Status.FAILED, Status.TIMED_OUT, Status.EXPIRED}
    assert not any(j.status in ended_badly for j in jobs.values()), jobs


def test_cancel_leaves_a_downloading_job_to_store_its_paid_results(runtime: Runtime) -> None:
    """`genq cancel` of a job that is downloading its results skips it, saying why, and the results are stored."""
    left = run(runtime, enqueue(runtime, {"id": "j", "prompt": "a cat"}), until=lambda: _downloading(runtime))
    report = cancel(runtime, "b")
    assert report.changed == [] and "already downloading" in report.skipped["b/j"]
    run(runtime, left)
    job = runtime.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and len(job.objects) == 1


def test_an_overdue_job_keeps_its_slot_through_the_sweep(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """A job overdue while its task runs upstream still occupies the account's concurrency: the sweep's slot
    audit leaves its slot held (giving it to the next job would put one task more upstream than allowed)."""
    sim = simulator_factory(time_scale=30.0)
    rt = runtime_factory(
        **aimed_at(sim),
        image_deadline_s=2.0,
        overdue_poll_s=1.0,
    )
    steps = enqueue(rt, {"id": "j", "prompt": "p", "model": "wanx2.0-t2i-turbo"})

    overdue = in_status(rt, Status.OVERDUE)

    left = run(rt, steps, timeout_s=20, until=overdue)
    assert overdue() and left
    report = sweep(rt, lambda step: None)
    assert report.slots_freed == 0
    assert rt.quota.slot_holders(Scope(rt.settings.account, "wanx2.0-t2i-turbo"), time.time()) == ["b/j"]


def test_a_lost_create_never_takes_the_task_of_a_worker_killed_mid_request(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Job j's create is lost on its way in (no task). Within its window, job x's create reaches the service and
    its worker is killed before the answer (x's create stays unsettled, its task unowned). j's reconciliation
    does not take x's task (it was made after x's create was sent, later than j's): j sends its create again
    and follows a task of its own prompt; x's task stays free for x's own reconciliation."""
    sim = simulator_factory(slow_response_s=1.0)
    rt = runtime_factory(**aimed_at(sim), http_timeout_s=1.5)
    steps = enqueue(rt, {"id": "j", "prompt": "j sim:create_hang:once"})
    account, model = rt.settings.account, "wan2.5-t2i-preview"

    def killed_mid_request() -> None:  # what a worker of job x leaves behind when SIGKILLed during its create
        time.sleep(0.5)
        rt.store.begin_create(account, model, "b/x", time.time())
        created = httpx.post(
            f"{sim.base_url}/services/aigc/text2image/image-synthesis",
            headers={"Authorization": f"Bearer {SIM_KEY}", "X-DashScope-Async": "enable"},
            json={"model": model, "input": {"prompt": "x"}, "parameters": {"n": 1}},
        )
        assert created.status_code == 200, created.text

    other = threading.Thread(target=killed_mid_request)
    other.start()
    run(rt, steps, timeout_s=40)
    other.join(10)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and job.submits == 2
    prompts = {t["task_id"]: t["prompt"] for t in sim.engine.task_report(time.time())}
    assert prompts[job.task_id or ""].startswith("j ")
    (x_task,) = [task for task, prompt in prompts.items() if prompt == "x"]
    assert rt.store.task_owner(x_task) is None  # left for x's own reconciliation


def test_result_urls_expired_or_replaced_by_a_page_fail_with_their_reason(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """A result URL already expired (403 from the result host, OSS's XML) and one answered 200 with an HTML page
    declared as a PNG each fail their image with their own code: nothing is stored, and the job ends failed
    naming it."""
    steps = enqueue(
        runtime,
        {"id": "gone", "prompt": "a cat sim:url_expired"},
        {"id": "page", "prompt": "a dog sim:url_wrong_bytes"},
    )
    run(runtime, steps, timeout_s=30)
    jobs = {j.job_id: j for j in runtime.store.jobs("b")}
    assert (jobs["gone"].status, jobs["gone"].error_code) == (Status.FAILED, "ResultUrlExpired")
    assert (jobs["page"].status, jobs["page"].error_code) == (Status.FAILED, "ResultContentType")
    assert stored_images(runtime) == []
    assert simulator.faults_fired() == {"url_expired": 1, "url_wrong_bytes": 1}


def test_finalize_skips_an_image_already_stored(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A finalize re-sent after its worker stored the first of two images and died downloads only the second:
    the stored one is kept as it is, and the job lists both with the sha256 of the bytes the service served."""
    steps = enqueue(runtime, {"id": "j", "prompt": "a cat", "n": "2"})

    downloading = in_status(runtime, Status.DOWNLOADING)

    left = run(runtime, steps, timeout_s=30, until=downloading)
    job = runtime.store.get("b/j")
    assert job is not None and len(job.results) == 2
    first = httpx.get(job.results[0]["url"]).content  # what the dead worker had fetched and stored
    digest = hashlib.sha256(first).hexdigest()
    runtime.results.put_file(
        object_key("b/j", 0, "png"),
        io.BytesIO(first),
        len(first),
        content_type="image/png",
        sha256=digest,
        task_id=job.task_id or "",
    )
    downloads_before = simulator.counters()["downloads"]
    run(runtime, left, timeout_s=30)
    job = runtime.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED
    assert simulator.counters()["downloads"] == downloads_before + 1  # only the image not yet stored
    served = [simulator.engine.served_sha256[f"{job.task_id}/{i}"] for i in range(2)]
    assert [o["sha256"] for o in job.objects] == served and served[0] == digest


def test_an_image_stored_from_an_earlier_task_is_fetched_again(runtime: Runtime, simulator: RunningSimulator) -> None:
    """An object left under the job's key by an earlier task (a retried job's first try) is not taken for the new
    task's image: the new task's (billed) image is downloaded and stored in its place."""
    old = b"bytes of an earlier task"
    runtime.results.put_file(
        object_key("b/j", 0, "png"),
        io.BytesIO(old),
        len(old),
        content_type="image/png",
        sha256=hashlib.sha256(old).hexdigest(),
        task_id="an-earlier-task",
    )
    job = one_job(runtime, "a cat")
    assert job.status is Status.SUCCEEDED and simulator.counters()["downloads"] == 1
    served = simulator.engine.served_sha256[f"{job.task_id}/0"]
    assert job.objects[0]["sha256"] == served == runtime.results.sha256_of("b/j/0.png")


def test_results_not_stored_before_their_urls_expire_end_the_job_failed(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """S3 still unreachable when the result URLs' 24 h have passed (clock moved on): the job ends failed with
    ResultExpired, how many attempts were made and the last error, and nothing more is tried."""
    rt = runtime_factory()
    steps = enqueue(rt, {"id": "j", "prompt": "a cat"})

    downloading = in_status(rt, Status.DOWNLOADING)

    left = run(rt, steps, timeout_s=30, until=downloading)
    s3_gone = runtime_factory(ensure_bucket=False, s3_endpoint=f"127.0.0.1:{free_port()}")
    s3_gone.clock = lambda: time.time() + rt.settings.result_url_life_s
    assert run(s3_gone, left, timeout_s=30) == []
    job = rt.store.get("b/j")
    assert job is not None and (job.status, job.error_code) == (Status.FAILED, "ResultExpired")
    assert "could not be stored before their URLs expired (1 attempts; last:" in (job.error_message or "")


def test_reconciliation_pages_through_the_task_list_and_skips_tasks_other_jobs_own(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A lost create reconciled while the service lists 150 tasks of the model in its window (two pages of
    100), each owned by another job and created closer to the lost create's send than its own task: none is
    taken, both pages are read, and the job adopts the task made from its own request; nothing is created
    again."""
    rt = runtime_factory(http_timeout_s=0.5)
    steps = enqueue(rt, {"id": "j", "prompt": "a cat sim:create_drop_after:once"})
    left = run(rt, steps, timeout_s=10, until=lambda: bool((j := rt.store.get("b/j")) and j.create_pending))
    job = rt.store.get("b/j")
    assert job is not None and job.submit_sent_at is not None
    engine, model = simulator.engine, MODELS[job.request.model]
    for i in range(150):
        other = engine.create(
            key=SIM_KEY,
            account="default",
            model=model,
            body={"other": i},
            prompt=f"other {i}",
            n=1,
            size="1024*1024",
            prompt_extend=False,
            now=job.submit_sent_at,
        )
        assert rt.store.own_task(other.task_id, f"b/other{i}")
    lists_before = simulator.counters().get("lists", 0)
    run(rt, left, timeout_s=30)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED
    (own,) = [t for t in engine.tasks.values() if t.prompt == "a cat sim:create_drop_after:once"]
    assert job.task_id == own.task_id and rt.store.task_owner(own.task_id) == "b/j"
    assert simulator.counters()["lists"] - lists_before == 2  # two pages
    assert simulator.counters()["creates"] == 151


def test_polls_held_back_by_the_accounts_query_budget_meet_no_429(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """With the account's query budget set to the service's own 2 queries per second, six jobs polled at once
    are held back by genq (a wait, not an error) and the service refuses none of their queries; all succeed."""
    simulator.engine.config.query_qps = 2
    account = AccountSettings(name="default", api_keys=(SecretStr(SIM_KEY),), base_url=simulator.base_url, query_qps=2)
    rt = runtime_factory(accounts=(account,))
    run(rt, enqueue(rt, *({"id": f"j{i}", "prompt": f"p{i}"} for i in range(6))), timeout_s=60)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 6
    assert simulator.counters()["queries"] >= 6 and simulator.counters().get("throttled_query", 0) == 0


@pytest.mark.parametrize(
    ("results", "code"),
    [
        ([], "NoResults"),
        ([{"code": "InternalError.Timeout", "message": "sub-image timed out"}], "InternalError.Timeout"),
    ],
)
def test_a_task_answered_succeeded_without_a_result_url_ends_failed_with_its_reason(
    runtime: Runtime, simulator: RunningSimulator, results: list[dict[str, str]], code: str
) -> None:
    """An answer off the service's contract (SUCCEEDED, yet no result carries a URL; the pages say such a task is
    FAILED), from an upstream answering in its own words: the job ends failed with the first sub-result's code,
    or NoResults, its slot given back, and nothing stored."""
    steps = enqueue(runtime, {"id": "j", "prompt": "a cat"})
    left = run(runtime, steps, timeout_s=10, until=lambda: bool((job := runtime.store.get("b/j")) and job.task_id))
    job = runtime.store.get("b/j")
    assert job is not None and job.task_id is not None

    def upstream(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith(f"/tasks/{job.task_id}"), request.url
        output = {"task_id": job.task_id, "task_status": "SUCCEEDED", "results": results}
        return httpx.Response(200, json={"request_id": "r1", "output": output, "usage": {"image_count": 0}})

    answering = httpx.Client(transport=httpx.MockTransport(upstream))
    settings = runtime.settings
    key = settings.dashscope_api_key
    assert key is not None
    runtime.dashscope = DashScopeClient(answering, base_url=settings.base_url, api_key=key.get_secret_value())
    run(runtime, left, timeout_s=10)
    ended = runtime.store.get("b/j")
    assert ended is not None and (ended.status, ended.error_code) == (Status.FAILED, code)
    assert ended.objects == [] and not runtime.quota.slot_holders(Scope("default", ended.request.model), time.time())
