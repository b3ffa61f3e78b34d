"""The simulator's synchronous endpoint (`multimodal-generation/generation`) over HTTP: the models it alone
serves, the Qwen answer shape (004:183-203, 352-373), its errors, and the calls it holds open."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import SIM_KEY, RunningSimulator

SYNC = "/services/aigc/multimodal-generation/generation"
HEADERS = {"Authorization": f"Bearer {SIM_KEY}", "Content-Type": "application/json"}


def messages_body(model: str, prompt: str = "a poster of three puppies", **parameters: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
        "parameters": parameters,
    }


def call(sim: RunningSimulator, body: dict[str, Any], timeout_s: float = 30) -> httpx.Response:
    return httpx.post(sim.base_url + SYNC, headers=HEADERS, json=body, timeout=timeout_s)


@pytest.mark.parametrize("model", ["qwen-image-2.0", "qwen-image-2.0-pro", "qwen-image-max"])
def test_new_qwen_models_are_served_only_synchronously(simulator: RunningSimulator, model: str) -> None:
    """The 2.0 series and max answer a sync call; an async create for them, at either image URL, is refused
    like any model that URL does not serve, and makes no task."""
    async_headers = {**HEADERS, "X-DashScope-Async": "enable"}
    old = {"model": model, "input": {"prompt": "a poster"}, "parameters": {}}
    for path, body in (
        ("/services/aigc/text2image/image-synthesis", old),
        ("/services/aigc/image-generation/generation", messages_body(model)),
    ):
        refused = httpx.post(simulator.base_url + path, headers=async_headers, json=body)
        assert refused.status_code == 400 and refused.json()["code"] == "InvalidParameter", refused.text
        assert "not served by this url" in refused.json()["message"]
    assert simulator.counters().get("creates", 0) == 0
    answer = call(simulator, messages_body(model))
    assert answer.status_code == 200, answer.text
    assert simulator.counters()["creates"] == 1


def test_sync_size_rule_is_the_models_own(simulator: RunningSimulator) -> None:
    """qwen-image-2.0 takes 8192*512 (pixels in range, no aspect rule) and refuses 2049*2048; qwen-image-max
    refuses a size outside its five."""
    assert call(simulator, messages_body("qwen-image-2.0", size="8192*512")).status_code == 200
    for model, size in (("qwen-image-2.0", "2049*2048"), ("qwen-image-max", "2048*2048")):
        refused = call(simulator, messages_body(model, size=size))
        assert (refused.status_code, refused.json()["code"]) == (400, "InvalidParameter"), refused.text
        assert size in refused.json()["message"]


def png_size(url: str) -> tuple[int, int]:
    """The width and height a result URL's PNG declares in its IHDR."""
    data = httpx.get(url).content
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("qwen-image", "1664*928"),
        ("qwen-image-plus", "1664*928"),
        ("qwen-image-2.0", "2048*2048"),
        ("qwen-image-2.0-pro", "2048*2048"),
        ("qwen-image-max", "1664*928"),
    ],
)
def test_qwen_sync_answer_has_the_pages_shape_and_one_image(simulator: RunningSimulator, model: str, size: str) -> None:
    """A Qwen sync call without n or size answers the pages' shape field for field (content items without
    `type`, no `output.finished`, usage of integer width and height and image_count) with one image of the
    model's default size."""
    answer = call(simulator, messages_body(model))
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"output", "usage", "request_id"} and set(data["output"]) == {"choices"}
    (only,) = data["output"]["choices"]
    assert only["finish_reason"] == "stop" and only["message"]["role"] == "assistant"
    (item,) = only["message"]["content"]
    assert set(item) == {"image"}
    width, height = (int(side) for side in size.split("*"))
    assert data["usage"] == {"width": width, "height": height, "image_count": 1}
    assert png_size(item["image"]) == (width, height)


def test_qwen_sync_answer_counts_the_images_asked_for(simulator: RunningSimulator) -> None:
    """n=2 and a custom size for qwen-image-2.0: two images of that size, counted in usage."""
    data = call(simulator, messages_body("qwen-image-2.0", n=2, size="1536*1024")).json()
    assert data["usage"] == {"width": 1536, "height": 1024, "image_count": 2}
    assert len(data["output"]["choices"]) == 2


def test_wan26_sync_answer_keeps_its_own_shape_and_default_of_four(simulator: RunningSimulator) -> None:
    """wan2.6-t2i's sync answer keeps `type: "image"`, `finished: true` and usage with `size` and tokens; without
    n it makes the service's default of 4 images."""
    data = call(simulator, messages_body("wan2.6-t2i")).json()
    assert data["output"]["finished"] is True and len(data["output"]["choices"]) == 4
    assert data["output"]["choices"][0]["message"]["content"][0]["type"] == "image"
    assert data["usage"] == {
        "image_count": 4,
        "input_tokens": 0,
        "output_tokens": 0,
        "size": "1280*1280",
        "total_tokens": 0,
    }


@pytest.mark.parametrize(("model", "images"), [("qwen-image", 1), ("qwen-image-plus", 1), ("wan2.5-t2i-preview", 4)])
def test_async_create_without_n_makes_the_models_default(simulator: RunningSimulator, model: str, images: int) -> None:
    """An async create without n makes one image for qwen-image and qwen-image-plus, four for a Wan model."""
    created = httpx.post(
        simulator.base_url + "/services/aigc/text2image/image-synthesis",
        headers={**HEADERS, "X-DashScope-Async": "enable"},
        json={"model": model, "input": {"prompt": "a poster"}, "parameters": {}},
    )
    assert created.status_code == 200, created.text
    (task,) = httpx.get(f"{simulator.url}/_sim/tasks").json()["tasks"]
    assert task["n"] == images


def test_a_sync_calls_task_cannot_be_cancelled(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A sync call's task, seen in the task list while it waits for a slot, refuses a cancel (its client is
    waiting for the answer), and the call still answers with its image."""
    sim = simulator_factory(time_scale=3.0)
    sim.engine.configure(limits={"qwen-image-max": [10, 1]})
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(call, sim, messages_body("qwen-image-max", f"p{i}")) for i in range(2)]
        deadline = time.monotonic() + 10
        while not (waiting := [t for t in sim.engine.task_report(time.time()) if t["status"] == "PENDING"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = httpx.post(f"{sim.base_url}/tasks/{waiting[0]['task_id']}/cancel", headers=HEADERS)
        assert (refused.status_code, refused.json()["code"]) == (400, "UnsupportedOperation")
        assert [c.result().status_code for c in calls] == [200, 200]


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("task_failed", 500, "InternalError.Algo"),
        ("task_timeout", 500, "InternalError.Timeout"),
        ("task_inspection", 400, "DataInspectionFailed"),
        ("task_ip_infringement", 400, "IPInfringementSuspect"),
        ("task_invalid_parameter", 400, "InvalidParameter"),
    ],
)
def test_a_sync_call_whose_task_fails_answers_an_error(
    simulator: RunningSimulator, fault: str, status: int, code: str
) -> None:
    """A sync call whose task ends FAILED answers the error shape (request_id, code, message): 500 for
    InternalError*, 400 for moderation and invalid parameters."""
    answer = call(simulator, messages_body("qwen-image-2.0", f"a poster sim:{fault}"))
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert set(answer.json()) == {"request_id", "code", "message"} and answer.json()["message"]
    assert simulator.faults_fired() == {fault: 1}


def test_create_ip_infringement_refuses_a_sync_call(simulator: RunningSimulator) -> None:
    """The input-moderation fault answers a sync call 400 IPInfringementSuspect with the service's message and
    makes no task."""
    answer = call(simulator, messages_body("qwen-image-max", "a famous mouse sim:create_ip_infringement"))
    assert (answer.status_code, answer.json()["code"]) == (400, "IPInfringementSuspect")
    assert "IP infringement" in answer.json()["message"]
    assert simulator.counters().get("creates", 0) == 0 and simulator.faults_fired() == {"create_ip_infringement": 1}


def test_sync_drop_bills_the_images_but_loses_the_answer(simulator: RunningSimulator) -> None:
    """With `sync_drop` the call's task runs and SUCCEEDS, its images are billed, and the connection is cut
    before the answer; the same word on an async create drops nothing (sync endpoint only)."""
    with pytest.raises(httpx.RemoteProtocolError):
        call(simulator, messages_body("qwen-image-2.0", "a poster sim:sync_drop", n=2))
    (task,) = simulator.engine.task_report(time.time())
    assert task["status"] == "SUCCEEDED" and task["sync"] is True
    counters = httpx.get(f"{simulator.url}/_sim/counters").json()
    assert counters["billed_images"] == 2 and counters["faults_fired"] == {"sync_drop": 1}
    created = httpx.post(
        simulator.base_url + "/services/aigc/text2image/image-synthesis",
        headers={**HEADERS, "X-DashScope-Async": "enable"},
        json={"model": "qwen-image", "input": {"prompt": "a poster sim:sync_drop"}, "parameters": {}},
    )
    assert created.status_code == 200 and simulator.faults_fired() == {"sync_drop": 1}


def counters(sim: RunningSimulator) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{sim.url}/_sim/counters").json()
    return answer


def scope_of(snapshot: dict[str, Any], model: str) -> dict[str, Any]:
    (found,) = [s for s in snapshot["scopes"] if s["model"] == model]
    return found


def test_sync_calls_queue_for_the_scopes_slots_and_count_as_in_flight(
    simulator_factory: Callable[..., RunningSimulator],
) -> None:
    """In queue mode five sync calls at once for a 2-slot scope all succeed, never more than 2 run at once,
    and the counters show the 5 the client held open (per scope and overall), back to 0 once answered."""
    sim = simulator_factory(time_scale=3.0)  # 1.2-3.3 s per image: the calls overlap
    sim.engine.configure(limits={"qwen-image-2.0": [10, 2]})
    with ThreadPoolExecutor(5) as pool:
        calls = [pool.submit(call, sim, messages_body("qwen-image-2.0", f"p{i}")) for i in range(5)]
        deadline = time.monotonic() + 10
        while counters(sim)["sync_in_flight"] < 5:
            assert time.monotonic() < deadline, counters(sim)
            time.sleep(0.05)
        assert scope_of(counters(sim), "qwen-image-2.0")["sync_in_flight"] == 5
        assert [c.result().status_code for c in calls] == [200] * 5
    snapshot = counters(sim)
    scope = scope_of(snapshot, "qwen-image-2.0")
    assert scope["max_running"] == 2 and len(scope["intervals"]) == 5
    assert (scope["sync_in_flight"], scope["sync_in_flight_max"]) == (0, 5)
    assert (snapshot["sync_in_flight"], snapshot["sync_in_flight_max"]) == (0, 5)


def test_throttle_mode_refuses_a_sync_call_beyond_the_concurrency(
    simulator_factory: Callable[..., RunningSimulator],
) -> None:
    """In throttle mode a sync call finding the scope's one slot taken gets 429 and is never in flight."""
    sim = simulator_factory(time_scale=3.0)
    sim.engine.configure(limits={"qwen-image-max": [10, 1]}, concurrency_mode="throttle")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, sim, messages_body("qwen-image-max", "first"))
        deadline = time.monotonic() + 10
        while counters(sim)["sync_in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = call(sim, messages_body("qwen-image-max", "second"))
        assert (second.status_code, second.json()["code"]) == (429, "Throttling.RateQuota")
        assert first.result().status_code == 200
    assert scope_of(counters(sim), "qwen-image-max")["sync_in_flight_max"] == 1


def test_a_dropped_or_failed_sync_call_is_no_longer_in_flight(simulator: RunningSimulator) -> None:
    """A call whose answer was cut, and one answered with an error, both leave the in-flight count."""
    with pytest.raises(httpx.RemoteProtocolError):
        call(simulator, messages_body("qwen-image-2.0", "a sim:sync_drop"))
    assert call(simulator, messages_body("qwen-image-2.0", "b sim:task_failed")).status_code == 500
    snapshot = counters(simulator)
    assert (snapshot["sync_in_flight"], snapshot["sync_in_flight_max"]) == (0, 1)


def test_a_reset_does_not_strand_a_sync_call_in_flight(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """Sync calls open across `POST /_sim/reset`, one of them still waiting for the scope's only slot, get their
    answers, and do not count in the new figures."""
    sim = simulator_factory(time_scale=3.0)
    sim.engine.configure(limits={"qwen-image-2.0": [10, 1]})
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(call, sim, messages_body("qwen-image-2.0", f"across a reset {i}"), 20) for i in range(2)]
        deadline = time.monotonic() + 10
        while sum(s["pending"] for s in counters(sim)["scopes"]) < 1:  # the second call waits for the slot
            assert time.monotonic() < deadline
            time.sleep(0.02)
        httpx.post(f"{sim.url}/_sim/reset")
        assert [c.result().status_code for c in calls] == [200, 200]
    snapshot = counters(sim)
    assert (snapshot["sync_in_flight"], snapshot["sync_in_flight_max"]) == (0, 0)
