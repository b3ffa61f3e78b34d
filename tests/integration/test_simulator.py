"""The simulator over HTTP, checked from the outside with plain httpx calls shaped like the seed pages' cURL."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.localstack.process import free_port
from ops.simulator.engine import Engine
from ops.simulator.profiles import Profile, Timing
from tests.conftest import SIM_KEY, RunningSimulator

IMAGE = "/services/aigc/text2image/image-synthesis"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


def create(
    sim: RunningSimulator, body: dict[str, Any], *, key: str = SIM_KEY, path: str = IMAGE, async_header: bool = True
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if async_header:
        headers["X-DashScope-Async"] = "enable"
    return httpx.post(sim.base_url + path, json=body, headers=headers)


def body(**parameters: Any) -> dict[str, Any]:
    return {
        "model": "wan2.5-t2i-preview",
        "input": {"prompt": "a flower shop"},
        "parameters": {"size": "1024*1024", "n": 1, **parameters},
    }


def query(sim: RunningSimulator, task_id: str) -> httpx.Response:
    return httpx.get(f"{sim.base_url}/tasks/{task_id}", headers={"Authorization": f"Bearer {SIM_KEY}"})


def wait_status(sim: RunningSimulator, task_id: str, wanted: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer: dict[str, Any] = query(sim, task_id).json()
        if answer["output"]["task_status"] == wanted:
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_checks_come_in_the_services_order(simulator: RunningSimulator) -> None:
    """Unknown key 401, missing async header 403 with the documented message, unknown model 404, bad size 400."""
    assert create(simulator, body(), key="nope").json()["code"] == "InvalidApiKey"
    denied = create(simulator, body(), async_header=False)
    assert (
        denied.status_code == 403 and denied.json()["message"] == "current user api does not support synchronous calls"
    )
    unknown = create(simulator, {**body(), "model": "dall-e-3"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "ModelNotFound"
    bad = create(simulator, body(size="1024x1024"))
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter" and "size" in bad.json()["message"]
    assert set(bad.json()) == {"request_id", "code", "message"}


def test_success_answer_has_the_seed_examples_fields(simulator: RunningSimulator) -> None:
    """A finished old-protocol task answers with every field of the seed example, typed the same."""
    created = create(simulator, body())
    assert created.json()["output"]["task_status"] == "PENDING"
    answer = wait_status(simulator, created.json()["output"]["task_id"], "SUCCEEDED")
    output = answer["output"]
    for name in ("submit_time", "scheduled_time", "end_time"):
        assert STAMP.match(output[name]), output[name]
    assert set(output["results"][0]) == {"url", "orig_prompt", "actual_prompt"}
    assert output["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert answer["usage"] == {"image_count": 1} and isinstance(answer["request_id"], str)
    assert re.search(r"\?Expires=\d+&OSSAccessKeyId=\w+&Signature=\w+$", output["results"][0]["url"])


def test_submit_rate_is_enforced_with_429(simulator: RunningSimulator) -> None:
    """Eight creates within one second (the simulator's clock frozen, so a loaded machine cannot spread them
    over two windows) for wan2.5: five pass, three get Throttling.RateQuota."""
    frozen = time.time()
    simulator.engine.clock = lambda: frozen
    answers = [create(simulator, body(seed=i)) for i in range(8)]
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 5 and codes.count(429) == 3
    assert {a.json()["code"] for a in answers if a.status_code == 429} == {"Throttling.RateQuota"}


def test_never_more_tasks_at_once_than_the_models_concurrency(
    simulator_factory: Callable[..., RunningSimulator],
) -> None:
    """Six tasks for a 2-slot model: the excess waits in PENDING and the max-running counter stays at 2."""
    simulator = simulator_factory(time_scale=4.0)  # 1.2-4 s per task: longer than the submit pacing
    ids = []
    for i in range(6):
        if i and i % 2 == 0:
            time.sleep(1.05)  # stay under the 2/s submit rate
        answer = create(simulator, {**body(seed=i), "model": "wan2.2-t2i-flash"})
        ids.append(answer.json()["output"]["task_id"])
    statuses = [query(simulator, t).json()["output"]["task_status"] for t in ids]
    assert "PENDING" in statuses
    for task_id in ids:
        wait_status(simulator, task_id, "SUCCEEDED", timeout_s=30)
    engine: Engine = simulator.engine
    (scope,) = [s for s in engine.scopes.values() if s.model.name == "wan2.2-t2i-flash"]
    assert scope.max_running == 2


def test_query_budget_is_20_per_second_per_account(simulator: RunningSimulator) -> None:
    """The 21st query within one second is refused with Throttling 429."""
    task_id = create(simulator, body()).json()["output"]["task_id"]
    with httpx.Client(headers={"Authorization": f"Bearer {SIM_KEY}"}) as client:
        codes = [client.get(f"{simulator.base_url}/tasks/{task_id}").status_code for _ in range(25)]
    assert codes.count(429) >= 5 and codes[:20].count(200) == 20


def test_cancel_only_while_pending(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """A queued task can be cancelled, and the answer says so in `output.task_status`; a finished one answers
    UnsupportedOperation."""
    simulator = simulator_factory(time_scale=4.0)
    ids = [
        create(simulator, {**body(seed=i), "model": "wanx2.0-t2i-turbo"}).json()["output"]["task_id"] for i in range(2)
    ]
    time.sleep(1.05)
    queued = create(simulator, {**body(seed=9), "model": "wanx2.0-t2i-turbo"}).json()["output"]["task_id"]
    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    cancelled = httpx.post(f"{simulator.base_url}/tasks/{queued}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert set(cancelled.json()) == {"request_id", "output"}
    assert cancelled.json()["output"] == {"task_id": queued, "task_status": "CANCELED"}
    assert query(simulator, queued).json()["output"]["task_status"] == "CANCELED"
    wait_status(simulator, ids[0], "SUCCEEDED", timeout_s=20)
    refused = httpx.post(f"{simulator.base_url}/tasks/{ids[0]}/cancel", headers=headers)
    assert refused.status_code == 400 and refused.json()["code"] == "UnsupportedOperation"


def test_unknown_task_is_unknown_and_tampered_url_is_refused(simulator: RunningSimulator) -> None:
    """An unknown id answers UNKNOWN; a result URL with a changed signature gets OSS's 403 XML."""
    assert query(simulator, "no-such-task").json()["output"]["task_status"] == "UNKNOWN"
    task_id = create(simulator, body()).json()["output"]["task_id"]
    url = wait_status(simulator, task_id, "SUCCEEDED")["output"]["results"][0]["url"]
    assert httpx.get(url).content.startswith(b"\x89PNG")
    tampered = httpx.get(url[:-4] + "0000")
    assert tampered.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in tampered.content


@pytest.mark.parametrize("n", [0, 5])
def test_n_out_of_range_is_invalid(simulator: RunningSimulator, n: int) -> None:
    """n outside 1..4 is InvalidParameter."""
    assert create(simulator, body(n=n)).json()["code"] == "InvalidParameter"


def test_limits_are_per_account_and_shared_by_its_keys(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """Two keys of one account share the submit rate; another account has its own (all within one second of the
    simulator's frozen clock)."""
    sim = simulator_factory()
    frozen = time.time()
    sim.engine.clock = lambda: frozen
    sim.engine.config.keys.update({"key-a2": "default", "key-b": "other"})

    def create_with(key: str, seed: int) -> int:
        return create(sim, body(seed=seed), key=key).status_code

    codes_a = [create_with(SIM_KEY if i % 2 else "key-a2", i) for i in range(6)]
    codes_b = [create_with("key-b", 100 + i) for i in range(5)]
    assert codes_a.count(200) == 5 and codes_a.count(429) == 1
    assert codes_b == [200] * 5


def test_counters_report_what_happened_and_reset_clears_them(simulator: RunningSimulator) -> None:
    """The admin counters show creates per key and model, duplicates, queries, downloads and slot intervals."""
    first = create(simulator, body(seed=1)).json()["output"]["task_id"]
    create(simulator, body(seed=1))  # the identical request again
    url = wait_status(simulator, first, "SUCCEEDED")["output"]["results"][0]["url"]
    httpx.get(url)
    counters = httpx.get(f"{simulator.url}/_sim/counters").json()
    assert counters["counters"]["creates"] == 2 and counters["duplicate_creates"] == 1
    assert counters["counters"]["queries"] >= 1 and counters["counters"]["downloads"] == 1
    assert counters["creates_by_key_model"] == [
        {"key_suffix": SIM_KEY[-4:], "model": "wan2.5-t2i-preview", "creates": 2}
    ]
    (scope,) = counters["scopes"]
    assert scope["max_running"] == 2 and len(scope["intervals"]) == 2
    httpx.post(f"{simulator.url}/_sim/reset")
    assert httpx.get(f"{simulator.url}/_sim/counters").json()["counters"] == {}


def test_genq_sim_runs_a_profile_file(tmp_path: Path) -> None:
    """`genq sim --profile-file F` serves with that profile, keys from SIM_API_KEYS, and stops on SIGTERM."""
    profile = tmp_path / "slowish.toml"
    profile.write_text('base = "fast"\n[faults]\ncreate_503 = 1.0\n')
    port = free_port()
    env = {**os.environ, "SIM_API_KEYS": "cli-key"}
    command = [
        sys.executable,
        "-c",
        "from producer.cli import main; main()",
        "sim",
        "--port",
        str(port),
        "--profile-file",
        str(profile),
    ]
    log = tmp_path / "sim.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_sim/health", timeout=0.5).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.1)
        assert health["profile"] == "slowish"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/v1{IMAGE}",
            json=body(),
            headers={"Authorization": "Bearer cli-key", "X-DashScope-Async": "enable"},
        )
        assert answer.status_code == 503
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/counters").json()["faults_fired"] == {"create_503": 1}
    finally:
        process.terminate()
        assert process.wait(10) is not None


def test_task_queries_and_lists_share_one_budget_and_its_peak_is_counted(simulator: RunningSimulator) -> None:
    """Thirteen task queries and twelve lists within one second (the clock frozen) make one account's peak of 25
    requests sent, 20 answered and 5 refused, reported per account in the counters."""
    task_id = create(simulator, body()).json()["output"]["task_id"]
    frozen = time.time()
    simulator.engine.clock = lambda: frozen
    with httpx.Client(headers={"Authorization": f"Bearer {SIM_KEY}"}) as client:
        for i in range(25):
            client.get(f"{simulator.base_url}/tasks" + ("" if i % 2 else f"/{task_id}"))
    (account,) = httpx.get(f"{simulator.url}/_sim/counters").json()["accounts"]
    assert account == {
        "account": "default",
        "query_qps": 20,
        "queries": 10,
        "lists": 10,
        "throttled_query": 5,
        "query_peak_1s": 25,
        "query_peak_1s_answered": 20,
    }


def test_query_peak_is_the_busiest_sliding_second_not_a_calendar_second(simulator: RunningSimulator) -> None:
    """Ten queries at 0.6 s past a whole second and ten at 1.4 s fall in two calendar seconds but within one
    sliding second: the peak is 20; ten more a second later do not raise it."""
    task_id = create(simulator, body()).json()["output"]["task_id"]
    whole = float(int(time.time()))
    now = [whole]
    simulator.engine.clock = lambda: now[0]
    with httpx.Client(headers={"Authorization": f"Bearer {SIM_KEY}"}) as client:
        for offset in (0.6, 1.4, 2.5):
            now[0] = whole + offset
            for _ in range(10):
                assert client.get(f"{simulator.base_url}/tasks/{task_id}").status_code == 200
    (account,) = httpx.get(f"{simulator.url}/_sim/counters").json()["accounts"]
    assert account["query_peak_1s"] == 20 and account["query_peak_1s_answered"] == 20
    assert account["queries"] == 30 and account["throttled_query"] == 0


def test_task_report_gives_when_each_task_started_to_run(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """With two slots and runs of exactly 2 s, a third task created while both run is reported without
    `scheduled` while it waits, then as scheduled when the first slot freed, and ending 2 s later."""
    sim = simulator_factory(profile=Profile("fixed", Timing(image_s=(2.0, 2.0), prompt_extend_s=0.0)))
    start = time.time()
    now = [start]
    sim.engine.clock = lambda: now[0]
    flash = {**body(), "model": "wan2.2-t2i-flash"}
    first = [create(sim, {**flash, "parameters": {"n": 1, "seed": i}}).json()["output"]["task_id"] for i in (1, 2)]
    now[0] = start + 1.0  # past the 2/s submit window
    third = create(sim, {**flash, "parameters": {"n": 1, "seed": 3}}).json()["output"]["task_id"]

    def report() -> dict[str, dict[str, Any]]:
        return {t["task_id"]: t for t in httpx.get(f"{sim.url}/_sim/tasks").json()["tasks"]}

    now[0] = start + 1.5
    waiting = report()
    assert [waiting[t]["scheduled"] for t in first] == [start, start] and waiting[third]["scheduled"] is None
    now[0] = start + 5.0
    done = report()[third]
    assert done["created"] == start + 1.0 and done["scheduled"] == start + 2.0 and done["end"] == start + 4.0


def sim_tasks(sim: RunningSimulator) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = httpx.get(f"{sim.url}/_sim/tasks").json()["tasks"]
    return sorted(tasks, key=lambda t: t["created"])


def messages(model: str, prompt: str = "a flower shop", **parameters: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
        "parameters": {"n": 1, **parameters},
    }


def test_over_long_negative_prompts_are_truncated_not_refused(simulator: RunningSimulator) -> None:
    """A negative prompt of 600 characters, in `input` (old protocol) or in `parameters` (wan2.6 async, Qwen
    sync), is accepted and kept as its first 500 (003:129, 440, 899); a shorter one is kept whole."""
    long, short = "blurry, " * 75, "x" * 499
    assert len(long) == 600
    old = body()
    old["input"]["negative_prompt"] = long
    answers = [
        create(simulator, old),
        create(
            simulator, messages("wan2.6-t2i", negative_prompt=long), path="/services/aigc/image-generation/generation"
        ),
        create(
            simulator,
            messages("qwen-image-2.0", negative_prompt=long),
            path="/services/aigc/multimodal-generation/generation",
            async_header=False,
        ),
        create(simulator, body(negative_prompt=short)),
    ]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert [t["negative_prompt_chars"] for t in sim_tasks(simulator)] == [500, 500, 500, 499]


@pytest.mark.parametrize("where", ["input", "parameters"])
def test_a_negative_prompt_that_is_not_text_is_invalid(simulator: RunningSimulator, where: str) -> None:
    """A negative prompt that is not a string is refused 400 InvalidParameter naming where it was, no task made."""
    request = body()
    request[where]["negative_prompt"] = ["blurry"]
    answer = create(simulator, request)
    assert (answer.status_code, answer.json()["code"]) == (400, "InvalidParameter")
    assert f"{where}.negative_prompt" in answer.json()["message"] and sim_tasks(simulator) == []


def test_task_report_gives_the_seed_as_sent_and_whether_the_call_was_sync(simulator: RunningSimulator) -> None:
    """`GET /_sim/tasks` reports each task's seed as sent (null when none) and `sync` for a task made by the sync
    endpoint."""
    create(simulator, body(seed=42))
    create(simulator, {**body(), "parameters": {"n": 1}})
    sync = create(
        simulator,
        messages("qwen-image-max", seed=7),
        path="/services/aigc/multimodal-generation/generation",
        async_header=False,
    )
    assert sync.status_code == 200, sync.text
    assert [(t["seed"], t["sync"]) for t in sim_tasks(simulator)] == [(42, False), (None, False), (7, True)]


ODD_VALUES: list[Any] = [None, True, -1, 1.5, 10**30, "", "x", "²*²", [], {}, "9" * 400]
ODD_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b"{",
    b"\xff\xfe",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion
    b'{"model": "qwen-image-2.0", "input": ' + b"{" * 50_000,
]


def test_any_create_body_gets_a_documented_answer_never_a_500(
    simulator_factory: Callable[..., RunningSimulator],
) -> None:
    """Bodies that are not JSON objects, nested past the parser, or carry odd values in every field, at every
    create URL, are each answered 200 or a 4xx with the service's error shape, never a 500."""
    sim = simulator_factory(time_scale=0.01)  # sync calls that are accepted answer at once
    sim.engine.configure(limits={name: [1000, 1000] for name in ("wan2.5-t2i-preview", "wan2.6-t2i", "qwen-image-2.0")})
    paths = [IMAGE, "/services/aigc/image-generation/generation", "/services/aigc/multimodal-generation/generation"]
    bodies = list(ODD_BODIES)
    for model, value in itertools.product(("wan2.5-t2i-preview", "wan2.6-t2i", "qwen-image-2.0"), ODD_VALUES):
        for field in ("n", "size", "seed", "duration", "prompt_extend", "negative_prompt"):
            request = messages(model, **{field: value})
            request["input"]["prompt"] = "a flower shop"
            bodies.append(json.dumps(request).encode())
        bodies.append(
            json.dumps({"model": model, "input": {"messages": [{"role": "user", "content": value}]}}).encode()
        )
    headers = {"Authorization": f"Bearer {SIM_KEY}", "Content-Type": "application/json", "X-DashScope-Async": "enable"}
    with httpx.Client(headers=headers, timeout=10) as client:
        for path, raw in itertools.product(paths, bodies):
            answer = client.post(sim.base_url + path, content=raw)
            assert answer.status_code < 500, (path, raw[:120], answer.text)
            assert answer.status_code == 200 or set(answer.json()) == {"request_id", "code", "message"}


@pytest.mark.parametrize(
    "settings",
    [{"video_bytes": float("inf")}, {"time_scale": float("nan")}, {"slow_response_s": -1}, {"time_scale": 10**400}],
)
def test_admin_settings_it_cannot_use_are_refused(simulator: RunningSimulator, settings: dict[str, Any]) -> None:
    """An infinite, NaN, negative or too large number for a setting is a 400 naming it, and nothing changes."""
    before = (simulator.engine.config.video_bytes, simulator.engine.config.time_scale)
    answer = httpx.post(f"{simulator.url}/_sim/config", content=json.dumps(settings).encode())
    assert answer.status_code == 400 and next(iter(settings)) in answer.json()["message"], answer.text
    assert (simulator.engine.config.video_bytes, simulator.engine.config.time_scale) == before
