"""Every fault of the simulator can be switched on (trigger word, probability, profile) and is observed from
the outside: status codes, broken bodies, timeouts, and the simulator's own counters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ops.simulator.models import MODELS
from tests.conftest import SIM_KEY, RunningSimulator

HEADERS = {"X-DashScope-Async": "enable", "Authorization": f"Bearer {SIM_KEY}"}
IMAGE = "/services/aigc/text2image/image-synthesis"


def body(prompt: str, n: int = 1) -> dict[str, Any]:
    return {"model": "wan2.5-t2i-preview", "input": {"prompt": prompt}, "parameters": {"size": "1024*1024", "n": n}}


def post(sim: RunningSimulator, prompt: str, *, n: int = 1, timeout_s: float = 10) -> httpx.Response:
    return httpx.post(sim.base_url + IMAGE, headers=HEADERS, json=body(prompt, n), timeout=timeout_s)


def get(sim: RunningSimulator, task_id: str, timeout_s: float = 10) -> httpx.Response:
    return httpx.get(f"{sim.base_url}/tasks/{task_id}", headers=HEADERS, timeout=timeout_s)


def settle(sim: RunningSimulator, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (answer := get(sim, task_id).json())["output"]["task_status"] in {"PENDING", "RUNNING"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return answer  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fault", "status", "code", "creates"),
    [
        ("create_500", 500, "InternalError", 0),
        ("create_503", 503, "ModelServingError", 0),
        ("create_inspection", 400, "DataInspectionFailed", 0),
        ("create_ip_infringement", 400, "IPInfringementSuspect", 0),
        ("burst", 429, "Throttling.BurstRate", 0),
    ],
)
def test_create_error_answers(simulator: RunningSimulator, fault: str, status: int, code: str, creates: int) -> None:
    """A create fault answers the documented status and code, and no task is created."""
    answer = post(simulator, f"a cat sim:{fault}")
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert simulator.counters().get("creates", 0) == creates
    assert simulator.engine.faults.fired[fault] == 1


@pytest.mark.parametrize(("fault", "creates"), [("create_drop_before", 0), ("create_drop_after", 1)])
def test_dropped_create_connection(simulator: RunningSimulator, fault: str, creates: int) -> None:
    """The connection is cut mid-answer; the task exists only for the 'after' variant (the ambiguous case)."""
    with pytest.raises(httpx.RemoteProtocolError):
        post(simulator, f"a cat sim:{fault}")
    assert simulator.counters().get("creates", 0) == creates
    assert simulator.faults_fired() == {fault: 1}


def test_malformed_create_answer_still_created_the_task(simulator: RunningSimulator) -> None:
    """A 200 with truncated JSON: the client cannot read the task id, but the task was created."""
    answer = post(simulator, "a cat sim:create_malformed")
    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()
    assert simulator.counters()["creates"] == 1 and simulator.faults_fired() == {"create_malformed": 1}


def test_slow_create_outlives_a_client_timeout(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A slow answer comes after the client gave up; the task was created anyway and shows in the task list."""
    sim = simulator_factory(slow_response_s=1.5)
    with pytest.raises(httpx.ReadTimeout):
        post(sim, "a cat sim:create_slow", timeout_s=0.5)
    listed = httpx.get(f"{sim.base_url}/tasks", headers=HEADERS).json()
    assert listed["total"] == 1 and listed["data"][0]["model_name"] == "wan2.5-t2i-preview"
    assert sim.faults_fired() == {"create_slow": 1}


def test_once_trigger_fails_only_the_first_time(simulator: RunningSimulator) -> None:
    """`sim:NAME:once` fails the first request with that prompt; the retry of the same request succeeds."""
    assert post(simulator, "a cat sim:create_500:once").status_code == 500
    assert post(simulator, "a cat sim:create_500:once").status_code == 200
    assert simulator.faults_fired() == {"create_500": 1}


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("query_500", 500, "InternalError"),
        ("query_503", 503, "ModelServingError"),
        ("query_429", 429, "Throttling"),
    ],
)
def test_query_error_answers(simulator: RunningSimulator, fault: str, status: int, code: str) -> None:
    """A query fault, triggered by the task's prompt, answers the documented status and code."""
    task_id = post(simulator, f"a cat sim:{fault}:once").json()["output"]["task_id"]
    answer = get(simulator, task_id)
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert get(simulator, task_id).status_code == 200  # :once: the next query is fine
    assert simulator.faults_fired() == {fault: 1}


def test_list_500_fails_the_task_list_by_probability(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """With `list_500` at probability 1 every `GET /tasks` answers 500 InternalError, and each one is counted."""
    sim = simulator_factory(faults={"list_500": 1.0})
    post(sim, "a cat")
    answer = httpx.get(f"{sim.base_url}/tasks", headers=HEADERS)
    assert (answer.status_code, answer.json()["code"]) == (500, "InternalError")
    assert sim.faults_fired() == {"list_500": 1}
    assert sim.counters().get("lists", 0) == 0


def test_query_drop_malformed_and_slow(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A query can be cut, answered with broken JSON, or answered too late for the client."""
    sim = simulator_factory(slow_response_s=1.5)
    dropped = post(sim, "x sim:query_drop:once").json()["output"]["task_id"]
    with pytest.raises(httpx.RemoteProtocolError):
        get(sim, dropped)
    broken = post(sim, "y sim:query_malformed:once").json()["output"]["task_id"]
    with pytest.raises(ValueError):
        get(sim, broken).json()
    slow = post(sim, "z sim:query_slow:once").json()["output"]["task_id"]
    with pytest.raises(httpx.ReadTimeout):
        get(sim, slow, timeout_s=0.5)
    assert sim.faults_fired() == {"query_drop": 1, "query_malformed": 1, "query_slow": 1}


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("task_failed", "InternalError.Algo"),
        ("task_timeout", "InternalError.Timeout"),
        ("task_inspection", "DataInspectionFailed"),
        ("task_ip_infringement", "IPInfringementSuspect"),
        ("task_invalid_parameter", "InvalidParameter"),
    ],
)
def test_task_ends_failed_with_a_documented_code(simulator: RunningSimulator, fault: str, code: str) -> None:
    """The task is accepted, runs, and ends FAILED with the code, a message, and all images failed."""
    answer = settle(simulator, post(simulator, f"a cat sim:{fault}", n=2).json()["output"]["task_id"])
    output = answer["output"]
    assert (output["task_status"], output["code"]) == ("FAILED", code) and output["message"]
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}
    assert simulator.faults_fired() == {fault: 1}


def test_partial_failure_bills_only_the_good_images(simulator: RunningSimulator) -> None:
    """n=4 with a partial failure: SUCCEEDED, some results carry a code, usage counts only the URLs."""
    answer = settle(simulator, post(simulator, "a cat sim:task_partial", n=4).json()["output"]["task_id"])
    results = answer["output"]["results"]
    good = [r for r in results if "url" in r]
    assert answer["output"]["task_status"] == "SUCCEEDED" and 1 <= len(good) < 4
    assert answer["usage"]["image_count"] == len(good) == answer["output"]["task_metrics"]["SUCCEEDED"]
    assert {r["code"] for r in results if "code" in r} == {"InternalError.Timeout"}
    assert simulator.faults_fired() == {"task_partial": 1}


def listed(sim: RunningSimulator) -> set[str]:
    answer = httpx.get(f"{sim.base_url}/tasks", headers=HEADERS, timeout=10).json()
    return {entry["task_id"] for entry in answer["data"]}


def test_task_expire_and_retention_answer_unknown(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A task expired at its end answers UNKNOWN to a query but is still in the task list (which only the
    retention empties), and any task past the (scaled) retention answers UNKNOWN and leaves the list."""
    sim = simulator_factory()
    expiring = post(sim, "a cat sim:task_expire").json()["output"]["task_id"]
    assert settle(sim, expiring)["output"]["task_status"] == "UNKNOWN"
    assert expiring in listed(sim) and sim.faults_fired() == {"task_expire": 1}
    short = simulator_factory(retention_s=1.5)
    task_id = post(short, "a dog").json()["output"]["task_id"]
    assert settle(short, task_id)["output"]["task_status"] == "SUCCEEDED"
    assert task_id in listed(short)
    time.sleep(1.6)
    assert get(short, task_id).json()["output"]["task_status"] == "UNKNOWN"
    assert task_id not in listed(short)


def test_result_url_faults(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A URL that fails once answers 503 then the PNG; an expired URL answers OSS's 403 XML."""
    sim = simulator_factory()
    once = settle(sim, post(sim, "a cat sim:url_fail_once").json()["output"]["task_id"])["output"]["results"][0]["url"]
    assert httpx.get(once).status_code == 503
    assert httpx.get(once).content.startswith(b"\x89PNG")
    expired = settle(sim, post(sim, "a cat sim:url_expired").json()["output"]["task_id"])["output"]["results"][0]["url"]
    answer = httpx.get(expired)
    assert answer.status_code == 403 and b"<Code>AccessDenied</Code>" in answer.content
    assert sim.faults_fired() == {"url_fail_once": 1, "url_expired": 1}


@pytest.mark.parametrize("word", ["sim:create_5000", "sim:create_500:twice", "sim:Create_500", "sim:url_fail"])
def test_unknown_trigger_words_are_refused(simulator: RunningSimulator, word: str) -> None:
    """A prompt with a trigger word that names no fault (or an unknown modifier) is answered 400 naming the
    word and listing the known faults, and nothing is created."""
    answer = post(simulator, f"a cat {word}")
    assert (answer.status_code, answer.json()["code"]) == (400, "InvalidParameter")
    assert f"unknown fault trigger {word} " in answer.json()["message"]
    assert "create_500, create_503" in answer.json()["message"]
    assert simulator.counters().get("creates", 0) == 0 and simulator.faults_fired() == {}


def test_faults_by_probability_through_the_admin_endpoint(simulator: RunningSimulator) -> None:
    """POST /_sim/config switches a fault on for every request; the counters report what fired, also after the
    next change; an unknown fault or setting, or a probability outside [0, 1], is refused with its name."""
    assert httpx.post(f"{simulator.url}/_sim/config", json={"faults": {"create_503": 1.0}}).status_code == 200
    codes = {post(simulator, f"prompt {i}").status_code for i in range(3)}
    assert codes == {503}
    assert httpx.post(f"{simulator.url}/_sim/config", json={"faults": {"create_503": 0}}).status_code == 200
    assert simulator.faults_fired() == {"create_503": 3}
    for refused_config, named in [
        ({"faults": {"no_such_fault": 1.0}}, "no_such_fault"),
        ({"faults": {"create_500": 1.5}}, "create_500"),
        ({"fault": {"create_500": 1.0}}, "fault"),
        ({"limits": {"wan9-t2i": [1, 1]}}, "wan9-t2i"),
    ]:
        refused = httpx.post(f"{simulator.url}/_sim/config", json=refused_config)
        assert refused.status_code == 400 and named in refused.json()["message"], refused.text
    assert simulator.engine.faults.probabilities == {"create_503": 0.0}  # nothing refused was applied


def test_big_videos_stream_at_the_configured_size(simulator: RunningSimulator) -> None:
    """With video_bytes set, a video result is a valid MP4 of that size, streamed."""
    httpx.post(f"{simulator.url}/_sim/config", json={"video_bytes": 5_000_000})
    video = {"model": "wan2.5-t2v-preview", "input": {"prompt": "waves"}, "parameters": {"size": "1280*720"}}
    task_id = httpx.post(
        f"{simulator.base_url}/services/aigc/video-generation/video-synthesis", headers=HEADERS, json=video
    ).json()["output"]["task_id"]
    url = settle(simulator, task_id)["output"]["video_url"]
    with httpx.stream("GET", url) as response:
        chunks = response.iter_bytes(64 * 1024)
        head = next(chunks)
        total = len(head) + sum(len(chunk) for chunk in chunks)
    assert head[4:8] == b"ftyp" and total == 5_000_000 == int(response.headers["content-length"])


def test_hostile_profile_throttles_bursts_and_tightens_limits(
    simulator_factory: Callable[..., RunningSimulator],
) -> None:
    """The hostile profile holds wan2.5 to 2 creates per second and answers a burst with BurstRate: judged on
    explicit times (a second create within 0.2 s is a burst, one 0.5 s later fits, a third within the second
    is over the rate), so a loaded machine cannot space the requests out of the burst; over HTTP, every 429
    a quick series of creates gets is counted by its kind."""
    sim = simulator_factory(profile="hostile")
    engine = sim.engine
    engine.configure(faults={name: 0.0 for name in engine.faults.probabilities})
    scope = engine.scope("default", MODELS["wan2.5-t2i-preview"])
    assert scope.submit_per_s == 2
    t = 1000.0
    times = (t, t + 0.1, t + 0.5, t + 0.6, t + 1.1, t + 1.2, t + 1.55)
    burst, rate = "Throttling.BurstRate", "Throttling.RateQuota"
    assert [engine.take_submit(scope, now) for now in times] == [None, burst, None, rate, None, rate, None]

    codes = [post(sim, f"p{i}").json().get("code") for i in range(4)]
    assert codes[0] is None and set(codes) <= {None, "Throttling.BurstRate", "Throttling.RateQuota"}
    counters = sim.counters()
    assert counters.get("throttled_burst", 0) == codes.count("Throttling.BurstRate")
    assert counters.get("throttled_submit", 0) == codes.count("Throttling.RateQuota")


def test_throttle_mode_refuses_tasks_beyond_the_concurrency(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """In 'throttle' concurrency mode a create beyond the tasks-at-once limit gets 429 instead of waiting."""
    sim = simulator_factory(time_scale=5.0)
    sim.engine.configure(concurrency_mode="throttle")
    flash = {"model": "wan2.2-t2i-flash", "input": {"prompt": "x"}, "parameters": {"size": "1024*1024", "n": 1}}
    first = [httpx.post(sim.base_url + IMAGE, headers=HEADERS, json=flash).status_code for _ in range(2)]
    time.sleep(1.05)
    third = httpx.post(sim.base_url + IMAGE, headers=HEADERS, json=flash)
    assert first == [200, 200] and third.status_code == 429
    assert sim.counters()["throttled_concurrency"] == 1
