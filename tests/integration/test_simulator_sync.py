"""The simulator's synchronous endpoint (`multimodal-generation/generation`) over HTTP: the models it alone
serves, the Qwen answer shape (004:183-203, 352-373), its errors, and the calls it holds open."""

from __future__ import annotations

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
