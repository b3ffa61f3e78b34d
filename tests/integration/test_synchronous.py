"""Synchronous models (the Qwen-Image 2.0 series, qwen-image-max) through the stages against the simulator: the
one call made on the call lane, its images stored like any task's, and every way its answer can fail, each
checked in the job store, the bucket and the simulator's own counters (which do not trust genq)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ops.doctor import check_call_lane
from ops.localstack import LocalStack
from producer.csv_source import CsvRow
from tests.conftest import RunningSimulator
from tests.integration.test_outcomes import events, one_job, stored_images
from tests.stage_runner import batch_done, enqueue, publish_rows, run, wait_until
from workers.call import SYNC_OUTCOME_UNKNOWN
from workers.claimed import claim
from workers.control import retry
from workers.dashscope.protocol import upstream_epoch
from workers.job import Action, Next, Status
from workers.quota.quota import Scope
from workers.runtime import Runtime

MODEL = "qwen-image-2.0-pro"


def test_a_synchronous_job_is_called_once_and_its_images_stored(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A qwen-image-2.0-pro job goes submit -> call -> finalize: one synchronous call and no task query, its image
    stored with the usage the service bills by, its slot given back, and one `genq.job.succeeded` event."""
    job = one_job(runtime, "a poster", model=MODEL, size="1536*2688", seed="11")
    assert job.status is Status.SUCCEEDED and job.submits == 1 and not job.create_pending
    assert stored_images(runtime) == ["b/j/0.png"]
    assert job.usage.get("image_count") == 1 and job.objects[0]["key"] == "b/j/0.png"
    counters = simulator.counters()
    assert counters["sync_calls"] == counters["creates"] == 1 and counters.get("queries", 0) == 0  # no task to poll
    manifest = runtime.results.get_json("b/j/manifest.json")
    assert manifest is not None and manifest["objects"][0]["seed"] == 11 and manifest["task_id"] is None
    assert [e["type"] for e in events(runtime)] == ["genq.job.succeeded", "genq.batch.finished"]
    assert not runtime.quota.slot_holders(Scope(runtime.settings.account, MODEL), runtime.clock())


def test_a_lost_synchronous_answer_ends_the_job_and_is_never_called_again(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """The service generates (and bills) the image but the connection drops before its answer: the job ends
    `SyncOutcomeUnknown` saying it may have been billed, after exactly one call; a plain `genq retry` skips it,
    and only `--force` calls again."""
    job = one_job(runtime, "a poster sim:sync_drop:once", model=MODEL)
    assert job.status is Status.FAILED and job.error_code == SYNC_OUTCOME_UNKNOWN
    assert "may have made and billed" in (job.error_message or "") and not job.create_pending
    seen = httpx.get(f"{simulator.url}/_sim/counters", timeout=10).json()
    assert seen["counters"]["sync_calls"] == 1 and seen["billed_images"] == 1  # made, billed, lost: by design

    report, steps = retry(runtime, "b")
    assert steps == [] and "SyncOutcomeUnknown is permanent" in report.skipped["b/j"]
    report, steps = retry(runtime, "b", force=True)
    run(runtime, steps, timeout_s=30)
    again = runtime.store.get("b/j")
    assert again is not None and again.status is Status.SUCCEEDED and simulator.counters()["sync_calls"] == 2


def lane_died_after_sending(rt: Runtime, model: str) -> Next:
    """Job b/j of `model`, handed to the lane, then claimed as the call stage claims it before its POST, and its
    lane killed (no answer, no further record): the message the sweep re-sends once the lease lapsed."""
    left = run(
        rt, enqueue(rt, {"id": "j", "prompt": "a poster", "model": model}), timeout_s=10, until=handed_to_the_lane(rt)
    )
    job = rt.store.get("b/j")
    assert job is not None and left
    died = claim(rt, job, Action.CALL, lease_s=0, fields={"create_pending": 1}, status=Status.SUBMITTED)
    assert died is not None
    return Next(Action.CALL, "b/j", died.attempt)


def test_a_call_whose_lane_died_is_not_made_again(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A lane worker killed after it marked the call as sent (its message redelivered by the sweep once the lease
    lapsed): the stage that receives it finds the mark and ends the job `SyncOutcomeUnknown` without a call."""
    run(runtime, [lane_died_after_sending(runtime, MODEL)], timeout_s=10)
    ended = runtime.store.get("b/j")
    assert ended is not None and ended.status is Status.FAILED and ended.error_code == SYNC_OUTCOME_UNKNOWN
    assert simulator.counters().get("sync_calls", 0) == 0


def test_a_call_that_waited_for_the_lane_past_its_deadline_is_not_made(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A job handed to the call lane whose message is taken only after its deadline (no lane worker ran) ends
    `timed_out`, saying to run one, and nothing is sent: a call made that late would be billed for nobody."""
    rt = runtime_factory(image_deadline_s=1.0)
    steps = enqueue(rt, {"id": "j", "prompt": "a poster", "model": MODEL})
    left = run(rt, steps, timeout_s=10, until=handed_to_the_lane(rt))
    time.sleep(1.1)
    run(rt, left, timeout_s=10)
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.TIMED_OUT and "--queues call" in (job.error_message or "")
    assert simulator.counters().get("sync_calls", 0) == 0


def test_a_refused_synchronous_call_is_handled_like_a_refused_create(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """The service's own refusals made nothing: a 500 is tried again (and succeeds), a moderation refusal and an
    IP-infringement one fail the job with their code, each after the calls they took and no more."""
    retried = one_job(runtime, "a poster sim:create_500:once", model=MODEL)
    assert retried.status is Status.SUCCEEDED and retried.submits == 2
    for trigger, code in (
        ("create_inspection", "DataInspectionFailed"),
        ("create_ip_infringement", "IPInfringementSuspect"),
    ):
        steps = enqueue(runtime, {"id": trigger, "prompt": f"a poster sim:{trigger}", "model": MODEL}, batch_id=trigger)
        run(runtime, steps, timeout_s=20)
        refused = runtime.store.get(f"{trigger}/{trigger}")
        assert refused is not None and refused.status is Status.FAILED and refused.error_code == code
        assert refused.submits == 1


SYNC_IN_FLIGHT = 20
#: More synchronous jobs than the scope takes at once, so that the bound on calls in flight is the slots' doing.
SYNC_JOBS = 24


def handed_to_the_lane(rt: Runtime) -> Callable[[], bool]:
    """A `run(..., until=)` condition: job b/j waits for its call."""
    return lambda: (job := rt.store.get("b/j")) is not None and job.next_action is Action.CALL


def test_a_mixed_batch_ends_and_synchronous_calls_leave_the_stage_workers_free(
    local_stack_factory: Callable[..., LocalStack],
) -> None:
    """Real workers, one batch of async Wan, async Qwen and 24 synchronous Qwen 2.0 jobs, whose scope a config
    raised to 20 at once (the call lane has 32 threads): every job succeeds; the simulator saw the calls overlap,
    never more than the scope's 20; and while they waited (each call several seconds) every async job was noticed
    within a few seconds of its end (one watch interval and its poll), which it could not be if the calls held the
    stage workers' 4 processes."""
    raised = {MODEL: {"submit_rate_per_s": 20, "max_concurrent": SYNC_IN_FLIGHT}}
    stack = local_stack_factory(workers=1, models=raised)
    assert stack.simulator_url is not None
    sim_config = {"limits": {MODEL: [20, SYNC_IN_FLIGHT]}, "time_scale": 2.0}  # images of 4-12 s
    httpx.post(f"{stack.simulator_url}/_sim/config", json=sim_config, timeout=10).raise_for_status()
    requests = [
        *({"id": f"s{i}", "prompt": f"poster {i}", "model": MODEL} for i in range(SYNC_JOBS)),
        *({"id": f"w{i}", "prompt": f"wan {i}", "model": "wan2.5-t2i-preview"} for i in range(4)),
        *({"id": f"q{i}", "prompt": f"qwen {i}", "model": "qwen-image-plus"} for i in range(2)),
    ]
    store, report = publish_rows(stack, "mixed", [CsvRow(i + 2, r) for i, r in enumerate(requests)])
    assert not report.rejected
    wait_until(batch_done(store, "mixed"), 180, "the mixed batch to finish")
    jobs = {j.job_id: j for j in store.jobs("mixed")}
    assert {j.status for j in jobs.values()} == {Status.SUCCEEDED}, {k: j.error_code for k, j in jobs.items()}

    async_jobs = [j for name, j in jobs.items() if not name.startswith("s")]
    lags = [(j.results_at or 0) - (upstream_epoch(j.upstream.get("end_time", "")) or 0) for j in async_jobs]
    # The watcher reads the list every 0.75 s, so an end is noticed within one interval and its poll; measured
    # here: under 0.8 s; with the calls held by the 4 stage processes instead: up to 6.6 s.
    assert max(lags) < 2.5, lags

    counters = httpx.get(f"{stack.simulator_url}/_sim/counters", timeout=10).json()
    (scope,) = [s for s in counters["scopes"] if s["model"] == MODEL]
    assert SYNC_IN_FLIGHT // 2 <= scope["sync_in_flight_max"] <= SYNC_IN_FLIGHT
    assert counters["counters"]["sync_calls"] == SYNC_JOBS


def test_doctor_names_synchronous_jobs_that_no_call_lane_took(runtime: Runtime, simulator: RunningSimulator) -> None:
    """A synchronous job handed to the call lane five minutes ago and never taken (no `genq worker --queues call`
    runs): `genq doctor` warns, naming the lane; with none waiting it says nothing of it."""
    assert check_call_lane(runtime.settings) == []
    earlier = dataclasses.replace(runtime, clock=lambda: time.time() - 300)
    run(earlier, enqueue(earlier, {"id": "j", "prompt": "a poster", "model": MODEL}), until=handed_to_the_lane(earlier))
    (finding,) = check_call_lane(runtime.settings)
    assert (
        finding.level == "warn"
        and "1 synchronous job(s) wait for the call lane, the oldest for 5 min" in finding.message
    )
    assert "--queues call" in finding.message


def test_a_lane_worker_that_lacks_the_jobs_model_fails_it_without_sending(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """The stage workers' config adds a synchronous model the call-lane worker's config lacks (a deployment whose
    processes read different configs): the lane fails the job `ModelUnknownToWorker`, naming the mismatch, and
    sends nothing (no call, so nothing that might be billed), and its slot is given back."""
    added = {"acme-sync": SYNC_FIGURES}
    stages = runtime_factory(models=added)
    lane = runtime_factory()
    steps = enqueue(stages, {"id": "j", "prompt": "a poster", "model": "acme-sync"})
    left = run(stages, steps, timeout_s=10, until=handed_to_the_lane(stages))
    run(lane, left, timeout_s=10)
    job = lane.store.get("b/j")
    assert job is not None and job.status is Status.FAILED and job.error_code == "ModelUnknownToWorker"
    assert "does not know the model 'acme-sync'" in (job.error_message or "") and not job.create_pending
    assert simulator.counters().get("sync_calls", 0) == 0
    assert not stages.quota.slot_holders(Scope(stages.settings.account, "acme-sync"), time.time())


def test_a_lost_call_taken_by_a_lane_lacking_the_model_is_still_a_lost_call(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A call marked sent whose lane died, re-sent to a lane worker whose config lacks the model: the job ends
    `SyncOutcomeUnknown` (its call may have been billed, so a plain retry must skip it), not "nothing was sent"."""
    stages = runtime_factory(models={"acme-sync": SYNC_FIGURES})
    lane = runtime_factory()
    run(lane, [lane_died_after_sending(stages, "acme-sync")], timeout_s=10)
    ended = lane.store.get("b/j")
    assert ended is not None and ended.error_code == SYNC_OUTCOME_UNKNOWN
    report, steps = retry(stages, "b")
    assert steps == [] and "b/j" in report.skipped


#: Text copied from the seed pages (which live beside the project, not in it).
PAGES = Path(__file__).parents[1] / "data" / "pages"

#: A synchronous model's figures, as a config would give them for a model of its own.
SYNC_FIGURES = {
    "kind": "image",
    "protocol": "multimodal-generation",
    "prompt_max_chars": 800,
    "n": [1, 1],
    "sizes": {"rule": "total-pixels", "min": "512*512", "max": "2048*2048"},
    "default_size": "1024*1024",
    "submit_rate_per_s": 2,
    "max_concurrent": 2,
}


def test_the_pages_own_example_call_goes_through_whole(runtime: Runtime, simulator: RunningSimulator) -> None:
    """The page's curl example for qwen-image-2.0-pro (004:303-326: its 2,045-character prompt, its negative prompt
    and size) is accepted as written and made whole: the service kept every character of the prompt."""
    prompt = (PAGES / "004-qwen-image-2.0-pro-prompt.txt").read_text(encoding="utf-8").strip()  # copied from 004:314
    assert len(prompt) == 2045
    job = one_job(runtime, prompt, model=MODEL, size="2048*2048", negative_prompt="Low resolution, low quality")
    assert job.status is Status.SUCCEEDED
    (task,) = httpx.get(f"{simulator.url}/_sim/tasks", timeout=10).json()["tasks"]
    assert len(task["prompt"]) == 2045
