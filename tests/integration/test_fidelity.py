"""genq against the points where the pages say how the service answers (file:line into the seed pages): each
answer is produced by the simulator, and genq's handling is checked in the job store, the account's pause, the
manifest and the simulator's own counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import httpx

from tests.conftest import SIM_KEY, RunningSimulator
from tests.integration.test_outcomes import events, one_job
from tests.stage_runner import enqueue, run
from workers import account_pause
from workers.dashscope import DashScopeClient
from workers.job import Status
from workers.runtime import Runtime


def test_a_task_failed_for_ip_infringement_or_a_bad_parameter_is_not_submitted_again(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """A task that ends FAILED with `IPInfringementSuspect` (002:434, 003:1760) or `InvalidParameter` (003:1113)
    fails its job with that code after one create: resubmitting the same request would fail (and cost) again."""
    for trigger, code in (
        ("task_ip_infringement", "IPInfringementSuspect"),
        ("task_invalid_parameter", "InvalidParameter"),
    ):
        steps = enqueue(runtime, {"id": "j", "prompt": f"a cat sim:{trigger}"}, batch_id=trigger)
        run(runtime, steps, timeout_s=30)
        job = runtime.store.get(f"{trigger}/j")
        assert job is not None and job.status is Status.FAILED and job.error_code == code and job.submits == 1
    assert simulator.counters()["creates"] == 2
    assert simulator.faults_fired() == {"task_ip_infringement": 1, "task_invalid_parameter": 1}


def test_an_invalid_key_on_a_query_pauses_the_account_and_keeps_the_task(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """A key revoked after the create: the task's query is answered 401 `InvalidApiKey`, which pauses the account
    (one `genq.account.paused` event) as it does on a create, without failing the job, whose task may run and bill;
    with a good key again and the account resumed, the result is stored."""
    good = runtime_factory()
    http = httpx.Client(timeout=10)
    revoked = replace(
        runtime_factory(), dashscope=DashScopeClient(http, base_url=simulator.base_url, api_key="sk-revoked")
    )
    steps = enqueue(good, {"id": "j", "prompt": "a cat"})
    left = run(good, steps, timeout_s=10, until=lambda: bool((j := good.store.get("b/j")) and j.task_id))
    left = run(revoked, left, timeout_s=3, max_sleep_s=0.5)
    pause = account_pause.paused(revoked.store, revoked.settings.account)
    assert pause is not None and pause["code"] == "InvalidApiKey"
    job = good.store.get("b/j")
    assert job is not None and not job.terminal
    assert [e["type"] for e in events(good)] == ["genq.account.paused"]
    assert account_pause.resume(good.store, good.settings.account)
    run(good, left, timeout_s=60)
    job = good.store.get("b/j")
    assert job is not None and job.status is Status.SUCCEEDED and simulator.counters()["creates"] == 1
    http.close()
    assert SIM_KEY != "sk-revoked"


def test_an_access_denied_for_the_requests_shape_fails_that_job_not_the_account(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """A proxy that strips `X-DashScope-Async` makes the service answer 403 `AccessDenied`, "current user api does
    not support synchronous calls" (003:386): a mistake of that request's shape, so the job fails with the
    service's message and the account is not paused (other jobs go on)."""

    def strip_async_header(request: httpx.Request) -> None:
        del request.headers["X-DashScope-Async"]

    stripped = httpx.Client(timeout=10, event_hooks={"request": [strip_async_header]})
    rt = replace(runtime, dashscope=DashScopeClient(stripped, base_url=simulator.base_url, api_key=SIM_KEY))
    job = one_job(rt, "a cat")
    stripped.close()
    assert job.status is Status.FAILED and job.error_code == "AccessDenied"
    assert "does not support synchronous calls" in (job.error_message or "")
    assert account_pause.paused(rt.store, rt.settings.account) is None
    assert [e["type"] for e in events(rt)] == ["genq.job.failed", "genq.batch.finished"]


def test_the_manifest_records_each_images_seed(runtime: Runtime, simulator: RunningSimulator) -> None:
    """With a seed, image i is made with seed + i (003:967): the manifest says so for each image, and the
    simulator saw the seed as sent; without one, each image's seed is null (the service drew it)."""
    job = one_job(runtime, "two cats", n="2", seed="41")
    manifest = runtime.results.get_json(f"{job.ref}/manifest.json")
    assert manifest is not None and [o["seed"] for o in manifest["objects"]] == [41, 42]
    sent = httpx.get(f"{simulator.url}/_sim/tasks", timeout=10).json()["tasks"]
    assert [t["seed"] for t in sent] == [41]
    run(runtime, enqueue(runtime, {"id": "u", "prompt": "one cat"}, batch_id="u"), timeout_s=30)
    unseeded = runtime.results.get_json("u/u/manifest.json")
    assert unseeded is not None and [o["seed"] for o in unseeded["objects"]] == [None]
