"""Fidelity evidence: the official DashScope Python SDK, written by others, accepts the simulator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from http import HTTPStatus

import dashscope
import httpx
import pytest
from dashscope import ImageSynthesis, MultiModalConversation, VideoSynthesis

from tests.conftest import SIM_KEY, RunningSimulator


@pytest.fixture
def sdk_simulator(simulator_factory: Callable[..., RunningSimulator]) -> Iterator[RunningSimulator]:
    """A simulator slow enough (1-3 s per task) that a task can still be cancelled; the SDK pointed at it."""
    sim = simulator_factory(time_scale=3.0)
    previous = dashscope.base_http_api_url
    dashscope.base_http_api_url = sim.base_url
    yield sim
    dashscope.base_http_api_url = previous


def test_image_async_call_fetch_and_wait(sdk_simulator: RunningSimulator) -> None:
    """async_call answers PENDING with a task id; fetch sees it; wait ends SUCCEEDED with the documented fields."""
    created = ImageSynthesis.async_call(
        api_key=SIM_KEY, model="wan2.5-t2i-preview", prompt="a flower shop", n=2, size="1024*1024"
    )
    assert created.status_code == HTTPStatus.OK and created.output.task_status == "PENDING"
    fetched = ImageSynthesis.fetch(created, api_key=SIM_KEY)
    assert fetched.status_code == HTTPStatus.OK and fetched.output.task_id == created.output.task_id
    done = ImageSynthesis.wait(created, api_key=SIM_KEY)
    assert done.status_code == HTTPStatus.OK and done.output.task_status == "SUCCEEDED"
    assert len(done.output.results) == 2 and all(r.url for r in done.output.results)
    assert done.output.results[0].actual_prompt and done.output.results[0].orig_prompt == "a flower shop"
    assert done.output.task_metrics == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert done.usage.image_count == 2
    for field in ("submit_time", "scheduled_time", "end_time"):
        assert done.output[field]


def test_image_cancel_of_a_pending_task(sdk_simulator: RunningSimulator) -> None:
    """cancel succeeds on a task still queued behind a full model, its answer's `output.task_status` is CANCELED
    (as the pages print it), and fetch then reports CANCELED."""
    blockers = [
        ImageSynthesis.async_call(api_key=SIM_KEY, model="wanx2.0-t2i-turbo", prompt=f"p{i}", n=1, size="1024*1024")
        for i in range(2)
    ]
    time.sleep(1.05)  # wanx2.0 takes 2 creates per second and runs 2 at once
    queued = ImageSynthesis.async_call(api_key=SIM_KEY, model="wanx2.0-t2i-turbo", prompt="q", n=1, size="1024*1024")
    assert all(b.status_code == HTTPStatus.OK for b in [*blockers, queued])
    cancelled = ImageSynthesis.cancel(queued, api_key=SIM_KEY)
    # The pages print `rsp.output.task_status`; SDK 2.0.2 hands a cancel's `output` back as a plain dict.
    assert cancelled.status_code == HTTPStatus.OK and cancelled.output["task_status"] == "CANCELED"
    assert ImageSynthesis.fetch(queued, api_key=SIM_KEY).output.task_status == "CANCELED"
    finished = ImageSynthesis.wait(blockers[0], api_key=SIM_KEY)
    refused = ImageSynthesis.cancel(blockers[0], api_key=SIM_KEY)
    assert finished.output.task_status == "SUCCEEDED"
    assert refused.status_code == HTTPStatus.BAD_REQUEST and refused.code == "UnsupportedOperation"


def test_video_async_call_and_wait(sdk_simulator: RunningSimulator) -> None:
    """VideoSynthesis ends SUCCEEDED with video_url, prompts and the video usage fields."""
    created = VideoSynthesis.async_call(
        api_key=SIM_KEY, model="wan2.5-t2v-preview", prompt="waves on rocks", size="1280*720", duration=5
    )
    assert created.status_code == HTTPStatus.OK
    done = VideoSynthesis.wait(created, api_key=SIM_KEY)
    assert done.status_code == HTTPStatus.OK and done.output.task_status == "SUCCEEDED"
    assert done.output.video_url.split("?")[0].endswith(".mp4") and done.output.orig_prompt == "waves on rocks"
    assert done.usage.video_count == 1 and done.usage.video_duration == 5


def test_sdk_list_sees_the_accounts_tasks(sdk_simulator: RunningSimulator) -> None:
    """The SDK's task list returns the created task with its model and status, paged."""
    created = ImageSynthesis.async_call(
        api_key=SIM_KEY, model="wan2.5-t2i-preview", prompt="listed", n=1, size="1024*1024"
    )
    listed = ImageSynthesis.list(api_key=SIM_KEY, model_name="wan2.5-t2i-preview", page_size=5)
    assert listed.status_code == HTTPStatus.OK
    assert listed.output["total"] >= 1 and listed.output["page_size"] == 5
    entry = next(d for d in listed.output["data"] if d["task_id"] == created.output.task_id)
    assert entry["model_name"] == "wan2.5-t2i-preview" and isinstance(entry["gmt_create"], int)


def test_sdk_sees_the_services_errors(sdk_simulator: RunningSimulator) -> None:
    """A wrong key and a bad size come back to the SDK as the service's codes."""
    wrong = ImageSynthesis.async_call(api_key="nope", model="wan2.5-t2i-preview", prompt="x", n=1, size="1024*1024")
    assert wrong.status_code == HTTPStatus.UNAUTHORIZED and wrong.code == "InvalidApiKey"
    bad = ImageSynthesis.async_call(api_key=SIM_KEY, model="wan2.2-t2i-flash", prompt="x", n=1, size="2000*2000")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and bad.code == "InvalidParameter"


NEGATIVE = (  # 004:160
    "Low resolution, low quality, distorted limbs, malformed fingers, oversaturated colors, wax-figure appearance, "
    "lack of facial detail, excessive smoothness, AI-looking artifacts, chaotic composition, blurry or warped text."
)


def test_qwen_image_sync_call_as_the_page_writes_it(sdk_simulator: RunningSimulator) -> None:
    """MultiModalConversation.call exactly as 004:152-162 writes it (qwen-image-2.0-pro, 2048*2048, no n) answers
    200 with the page's shape: one content item holding only an image URL that downloads as a 2048x2048 PNG, and
    usage width, height and image_count; the simulator saw a sync call with the negative prompt."""
    response = MultiModalConversation.call(
        api_key=SIM_KEY,
        model="qwen-image-2.0-pro",
        messages=[{"role": "user", "content": [{"text": "A hand-drawn poster of three puppies playing with a ball"}]}],
        result_format="message",
        stream=False,
        watermark=False,
        prompt_extend=True,
        negative_prompt=NEGATIVE,
        size="2048*2048",
    )
    assert response.status_code == HTTPStatus.OK, (response.code, response.message)
    (choice,) = response.output.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    (item,) = choice.message.content
    assert set(item) == {"image"}
    png = httpx.get(item["image"]).content
    assert png.startswith(b"\x89PNG") and (png[16:20], png[20:24]) == ((2048).to_bytes(4, "big"),) * 2
    assert (response.usage["width"], response.usage["height"], response.usage["image_count"]) == (2048, 2048, 1)
    (task,) = sdk_simulator.engine.task_report(time.time())
    assert task["sync"] is True and task["negative_prompt_chars"] == len(NEGATIVE) and task["n"] == 1


def test_qwen_image_sync_errors_reach_the_sdk(sdk_simulator: RunningSimulator) -> None:
    """A size outside qwen-image-max's five, and an input-moderation refusal, come back to the SDK as the
    service's status and code."""
    messages = [{"role": "user", "content": [{"text": "a poster"}]}]
    bad = MultiModalConversation.call(api_key=SIM_KEY, model="qwen-image-max", messages=messages, size="2048*2048")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and bad.code == "InvalidParameter"
    moderated = [{"role": "user", "content": [{"text": "a famous mouse sim:create_ip_infringement"}]}]
    refused = MultiModalConversation.call(api_key=SIM_KEY, model="qwen-image-2.0", messages=moderated)
    assert refused.status_code == HTTPStatus.BAD_REQUEST and refused.code == "IPInfringementSuspect"
