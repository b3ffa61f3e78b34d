"""The seed pages' cURL requests, sent verbatim as httpx calls; every field of the pages' example responses must
be present in the simulator's answer with the same JSON type. Examples are copied from ../shared/seeds/."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import SIM_KEY, RunningSimulator

FLOWER = "A flower shop with exquisite windows, a beautiful wooden door, and flowers on display"
ASYNC = {"X-DashScope-Async": "enable", "Authorization": f"Bearer {SIM_KEY}", "Content-Type": "application/json"}

# 000/001 "cURL": the old image protocol.
OLD_REQUEST = {"model": "wan2.5-t2i-preview", "input": {"prompt": FLOWER}, "parameters": {"size": "1024*1024", "n": 1}}
# 003: wan2.6, async and sync.
NEW_REQUEST = {
    "model": "wan2.6-t2i",
    "input": {"messages": [{"role": "user", "content": [{"text": FLOWER}]}]},
    "parameters": {"prompt_extend": True, "watermark": False, "n": 1, "negative_prompt": "", "size": "1280*1280"},
}
# 003: wan2.2 with a negative prompt.
NEGATIVE_REQUEST = {
    "model": "wan2.2-t2i-flash",
    "input": {
        "prompt": "Snowy ground, a small white chapel, aurora borealis, winter scene, soft light.",
        "negative_prompt": "person",
    },
    "parameters": {"size": "1024*1024", "n": 1},
}

# 004 "curl": qwen-image-2.0-pro on the sync URL, no n.
PUPPIES = (
    "Healing-style hand-drawn poster featuring three puppies playing with a ball on lush green grass, adorned "
    "with decorative elements such as birds and stars. The main title “Come Play Ball!” is prominently displayed "
    "at the top in bold, blue cartoon font. Below it, the subtitle “Come [Show Off Your Skills]!” appears in "
    "green font. A speech bubble adds playful charm with the text: “Hehe, watch me amaze my little friends "
    "next!” At the bottom, supplementary text reads: “We get to play ball with our friends again!” The color "
    "palette centers on fresh greens and blues, accented with bright pink and yellow tones to highlight a "
    "cheerful, childlike atmosphere."
)
QWEN_REQUEST = {
    "model": "qwen-image-2.0-pro",
    "input": {"messages": [{"role": "user", "content": [{"text": PUPPIES}]}]},
    "parameters": {
        "negative_prompt": (
            "Low resolution, low quality, distorted limbs, malformed fingers, oversaturated colors, wax-figure "
            "appearance, lack of facial detail, excessive smoothness, AI-looking artifacts, chaotic composition, "
            "blurry or warped text."
        ),
        "prompt_extend": True,
        "watermark": False,
        "size": "2048*2048",
    },
}

CREATED_EXAMPLE = {
    "request_id": "5dbf9dc5-4f4c-9605-85ea-542f97709ba8",
    "output": {"task_id": "7277e20e-aa01-4709-xxxxxxxx", "task_status": "PENDING"},
}
OLD_SUCCEEDED_EXAMPLE = {  # 000, the full query answer
    "request_id": "24143559-9964-4898-8f9c-d968bba182b9",
    "output": {
        "task_id": "2de3f7e1",
        "task_status": "SUCCEEDED",
        "submit_time": "2025-12-03 10:19:18.293",
        "scheduled_time": "2025-12-03 10:19:18.320",
        "end_time": "2025-12-03 10:19:31.890",
        "results": [
            {
                "orig_prompt": FLOWER,
                "actual_prompt": "A cozy, elegant flower shop.",
                "url": "https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/x.png?Expires=1",
            }
        ],
        "task_metrics": {"TOTAL": 1, "FAILED": 0, "SUCCEEDED": 1},
    },
    "usage": {"image_count": 1},
}
NEW_SUCCEEDED_EXAMPLE = {  # 003, async wan2.6 query answer
    "request_id": "2ddf53fa-699a-4267-9446-xxxxxx",
    "output": {
        "task_id": "3cd3fa4e",
        "task_status": "SUCCEEDED",
        "submit_time": "2025-12-18 20:03:01.802",
        "scheduled_time": "2025-12-18 20:03:01.834",
        "end_time": "2025-12-18 20:03:29.260",
        "finished": True,
        "choices": [
            {
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": [
                        {
                            "image": "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/xxx.png?Expires=xxx",
                            "type": "image",
                        }
                    ],
                },
            }
        ],
    },
    "usage": {"size": "1280*1280", "total_tokens": 0, "image_count": 1, "output_tokens": 0, "input_tokens": 0},
}
SYNC_EXAMPLE = {  # 003, sync multimodal-generation answer
    "output": {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {
                    "content": [
                        {
                            "image": "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/xxxx.png?Expires=xxx",
                            "type": "image",
                        }
                    ],
                    "role": "assistant",
                },
            }
        ],
        "finished": True,
    },
    "usage": {"image_count": 1, "input_tokens": 0, "output_tokens": 0, "size": "1280*1280", "total_tokens": 0},
    "request_id": "815505c6-7c3d-49d7-b197-xxxxx",
}
QWEN_SYNC_EXAMPLE = {  # 004, the curl answer
    "output": {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {
                    "content": [
                        {"image": "https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/xxx.png?Expires=xxx"}
                    ],
                    "role": "assistant",
                },
            }
        ]
    },
    "usage": {"height": 2048, "image_count": 1, "width": 2048},
    "request_id": "d0250a3d-b07f-49e1-bdc8-6793f4929xxx",
}
FAILED_EXAMPLE = {
    "request_id": "e5d70b02",
    "output": {
        "task_id": "86ecf553",
        "task_status": "FAILED",
        "code": "InvalidParameter",
        "message": "xxxxxx",
        "task_metrics": {"TOTAL": 4, "SUCCEEDED": 0, "FAILED": 4},
    },
}
PARTIAL_EXAMPLE = {
    "request_id": "85eaba38",
    "output": {
        "task_id": "86ecf553",
        "task_status": "SUCCEEDED",
        "results": [
            {"url": "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/123/a1.png"},
            {
                "code": "InternalError.Timeout",
                "message": "An internal timeout error has occurred during "
                "execution, please try again later or contact service support.",
            },
        ],
        "task_metrics": {"TOTAL": 2, "SUCCEEDED": 1, "FAILED": 1},
    },
    "usage": {"image_count": 1},
}
UNKNOWN_EXAMPLE = {"request_id": "a4de7c32", "output": {"task_id": "502a00b1", "task_status": "UNKNOWN"}}
ERROR_EXAMPLE = {"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "fb53c4ec"}


def assert_same_shape(example: Any, actual: Any, path: str = "$") -> None:
    """Every field of `example` is in `actual` with the same JSON type, recursively (lists: item by item)."""
    assert type(actual) is type(example), (
        f"{path}: {type(actual).__name__} where the example has {type(example).__name__}"
    )
    if isinstance(example, dict):
        for key, value in example.items():
            assert key in actual, f"{path}.{key} missing"
            assert_same_shape(value, actual[key], f"{path}.{key}")
    elif isinstance(example, list):
        assert len(actual) >= len(example), f"{path}: {len(actual)} items, example has {len(example)}"
        for index, (want, got) in enumerate(zip(example, actual, strict=False)):
            assert_same_shape(want, got, f"{path}[{index}]")


def create(sim: RunningSimulator, body: dict[str, Any], path: str = "text2image/image-synthesis") -> dict[str, Any]:
    response = httpx.post(f"{sim.base_url}/services/aigc/{path}", headers=ASYNC, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def settle(sim: RunningSimulator, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        answer: dict[str, Any] = httpx.get(f"{sim.base_url}/tasks/{task_id}", headers=ASYNC).json()
        if answer["output"]["task_status"] not in {"PENDING", "RUNNING"}:
            return answer
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_old_protocol_requests_get_the_examples_answers(simulator: RunningSimulator) -> None:
    """The 000/001 and 003 old-protocol cURL calls: create and query answers have every example field."""
    for request in (OLD_REQUEST, NEGATIVE_REQUEST):
        created = create(simulator, request)
        assert_same_shape(CREATED_EXAMPLE, created)
        assert_same_shape(OLD_SUCCEEDED_EXAMPLE, settle(simulator, created["output"]["task_id"]))


def sync_call(simulator: RunningSimulator, body: dict[str, Any]) -> Any:
    """A synchronous call as the page's cURL sends it (no async header); its 200 answer's JSON."""
    sync_headers = {k: v for k, v in ASYNC.items() if k != "X-DashScope-Async"}
    answer = httpx.post(
        f"{simulator.base_url}/services/aigc/multimodal-generation/generation",
        headers=sync_headers,
        json=body,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_wan26_async_and_sync_requests_get_the_examples_answers(simulator: RunningSimulator) -> None:
    """The 003 wan2.6 cURL calls: async create + query, and the sync call without the async header."""
    created = create(simulator, NEW_REQUEST, "image-generation/generation")
    assert_same_shape(CREATED_EXAMPLE, created)
    assert_same_shape(NEW_SUCCEEDED_EXAMPLE, settle(simulator, created["output"]["task_id"]))
    assert_same_shape(SYNC_EXAMPLE, sync_call(simulator, NEW_REQUEST))


def test_qwen_sync_request_gets_the_examples_answer(simulator: RunningSimulator) -> None:
    """The 004 qwen-image-2.0-pro cURL call (no n, no async header) answers every field of the example, and
    nothing the example does not have."""
    answer = sync_call(simulator, QWEN_REQUEST)
    assert_same_shape(QWEN_SYNC_EXAMPLE, answer)
    assert_same_shape(answer, QWEN_SYNC_EXAMPLE)  # both ways: no extra field either


def test_failure_examples(simulator_factory: Callable[..., RunningSimulator]) -> None:
    """FAILED, partial failure, expired (UNKNOWN) and error answers have every field of their examples."""
    sim = simulator_factory(faults={"task_invalid_parameter": 1.0})
    failed = settle(sim, create(sim, {**OLD_REQUEST, "parameters": {"size": "1024*1024", "n": 4}})["output"]["task_id"])
    assert_same_shape(FAILED_EXAMPLE, failed)
    assert failed["output"]["code"] == "InvalidParameter"  # the example's own code and task_metrics (003:1105-1120)
    assert failed["output"]["task_metrics"] == FAILED_EXAMPLE["output"]["task_metrics"]  # type: ignore[index]
    assert sim.faults_fired() == {"task_invalid_parameter": 1}
    partial_request = {
        **OLD_REQUEST,
        "input": {"prompt": FLOWER + " sim:task_partial"},
        "parameters": {"size": "1024*1024", "n": 2},
    }
    simulator = simulator_factory()
    partial = settle(simulator, create(simulator, partial_request)["output"]["task_id"])
    assert_same_shape(PARTIAL_EXAMPLE, partial)
    assert partial["output"]["results"][1]["code"] == "InternalError.Timeout"
    assert simulator.faults_fired() == {"task_partial": 1}
    assert_same_shape(UNKNOWN_EXAMPLE, settle(simulator, "502a00b1-19d9-4839-a82f-000000"))
    wrong = httpx.post(
        f"{simulator.base_url}/services/aigc/text2image/image-synthesis",
        headers={**ASYNC, "Authorization": "Bearer nope"},
        json=OLD_REQUEST,
    )
    assert wrong.status_code == 401
    assert_same_shape(ERROR_EXAMPLE, wrong.json())
