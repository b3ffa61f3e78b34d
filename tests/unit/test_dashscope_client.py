"""The DashScope client over an httpx MockTransport: what it sends, and how it maps every kind of answer."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from workers.dashscope import DashScopeClient
from workers.dashscope.classify import error_class, is_transient_task_failure
from workers.errors import (
    AccountError,
    CreateOutcomeUnknown,
    PermanentRemoteError,
    Throttled,
    TransientRemoteError,
)
from workers.requests import RequestInput, validate_request

BASE = "https://dashscope-intl.aliyuncs.com/api/v1"


def client(handler: Callable[[httpx.Request], httpx.Response]) -> DashScopeClient:
    return DashScopeClient(httpx.Client(transport=httpx.MockTransport(handler)), base_url=BASE, api_key="k-123")


def request_for(model: str, **fields: str):  # type: ignore[no-untyped-def]
    return validate_request(RequestInput(prompt="a cat", model=model, **fields), default_model=model)


def test_old_protocol_create_sends_async_header_key_and_explicit_n() -> None:
    """A create goes to the model's path with the async header, the bearer key and n spelled out."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": "r1", "output": {"task_id": "t1", "task_status": "PENDING"}})

    task_id, request_id = client(handler).create_task(request_for("wan2.5-t2i-preview", seed="3"))
    assert (task_id, request_id) == ("t1", "r1")
    sent = seen[0]
    assert sent.url.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert sent.headers["X-DashScope-Async"] == "enable"
    assert sent.headers["Authorization"] == "Bearer k-123"
    body = json.loads(sent.content)
    assert body["input"] == {"prompt": "a cat"}
    assert body["parameters"] == {"size": "1280*1280", "n": 1, "prompt_extend": True, "watermark": False, "seed": 3}


def test_wan26_create_uses_messages_protocol() -> None:
    """wan2.6 sends one user message with one text item, and negative_prompt under parameters."""
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        assert request.url.path.endswith("/image-generation/generation")
        return httpx.Response(200, json={"output": {"task_id": "t2", "task_status": "PENDING"}})

    client(handler).create_task(request_for("wan2.6-t2i"))
    assert bodies[0]["input"] == {"messages": [{"role": "user", "content": [{"text": "a cat"}]}]}
    assert bodies[0]["parameters"]["negative_prompt"] == ""  # type: ignore[index]


def test_video_create_sends_duration_not_n() -> None:
    """Video goes to video-synthesis with a duration."""
    bodies: list[dict[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"output": {"task_id": "t3", "task_status": "PENDING"}})

    client(handler).create_task(request_for("wan2.5-t2v-preview", size="1280*720", duration="10"))
    assert bodies[0]["parameters"]["duration"] == 10 and "n" not in bodies[0]["parameters"]


def test_429_becomes_throttled_with_retry_after() -> None:
    """HTTP 429 Throttling.RateQuota is Throttled, carrying a Retry-After when one is sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            headers={"Retry-After": "2"},
            json={"code": "Throttling.RateQuota", "message": "slow down", "request_id": "r"},
        )

    with pytest.raises(Throttled) as info:
        client(handler).create_task(request_for("wan2.5-t2i-preview"))
    assert info.value.retry_after_s == 2.0 and info.value.code == "Throttling.RateQuota"


def test_throttling_code_wins_over_http_400() -> None:
    """Some deployments send throttling with HTTP 400: the code decides."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": "Throttling", "message": "x"})

    with pytest.raises(Throttled):
        client(handler).get_task("t")


def test_timeout_on_create_is_outcome_unknown_but_on_query_is_transient() -> None:
    """A create that got no answer may have created a task; a query that got none is simply transient."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(CreateOutcomeUnknown):
        client(handler).create_task(request_for("wan2.5-t2i-preview"))
    with pytest.raises(TransientRemoteError) as info:
        client(handler).get_task("t")
    assert not isinstance(info.value, CreateOutcomeUnknown)


def test_connect_error_on_create_is_plainly_transient() -> None:
    """A create that never connected cannot have created a task."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientRemoteError) as info:
        client(handler).create_task(request_for("wan2.5-t2i-preview"))
    assert not isinstance(info.value, CreateOutcomeUnknown)


def test_malformed_json_query_is_transient() -> None:
    """A query answered with broken JSON is a transient fault, not a crash."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"output": {"task_')

    with pytest.raises(TransientRemoteError) as info:
        client(handler).get_task("t")
    assert info.value.code == "MalformedResponse"


def test_api_key_never_appears_in_error_text() -> None:
    """An error answer's message does not carry the key the client sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": "InvalidApiKey", "message": "Invalid API-key provided."})

    with pytest.raises(AccountError) as info:
        client(handler).get_task("t")
    assert "k-123" not in str(info.value)


def test_parses_new_protocol_and_video_results() -> None:
    """Result URLs come out of choices[] for wan2.6 and video_url for video."""
    bodies = iter(
        [
            {
                "output": {
                    "task_id": "a",
                    "task_status": "SUCCEEDED",
                    "choices": [
                        {
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": [{"image": "https://h/1.png", "type": "image"}],
                            },
                        }
                    ],
                },
                "usage": {"image_count": 1},
            },
            {
                "output": {
                    "task_id": "b",
                    "task_status": "SUCCEEDED",
                    "video_url": "https://h/v.mp4",
                    "end_time": "2025-01-08 19:36:13.270",
                },
                "usage": {"video_count": 1},
            },
            {
                "output": {
                    "task_id": "c",
                    "task_status": "SUCCEEDED",
                    "results": [{"url": "https://h/a.png"}, {"code": "InternalError.Timeout", "message": "timeout"}],
                }
            },
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(bodies))

    c = client(handler)
    assert c.get_task("a").urls == ["https://h/1.png"]
    video = c.get_task("b")
    assert video.urls == ["https://h/v.mp4"] and video.upstream_times() == {"end_time": "2025-01-08 19:36:13.270"}
    partial = c.get_task("c")
    assert partial.urls == ["https://h/a.png"] and partial.results[1].code == "InternalError.Timeout"


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("Throttling.RateQuota", 429, "", Throttled),
        ("Throttling.BurstRate", 429, "", Throttled),
        ("Throttling.AllocationQuota", 429, "Free allocated quota exceeded.", AccountError),
        ("Throttling.AllocationQuota", 429, "quota", Throttled),
        ("InvalidParameter", 400, "", PermanentRemoteError),
        ("InvalidParameter.DataInspection", 400, "", PermanentRemoteError),
        ("DataInspectionFailed", 400, "", PermanentRemoteError),
        ("IPInfringementSuspect", 400, "", PermanentRemoteError),
        ("InvalidApiKey", 401, "", AccountError),
        ("AccessDenied.Unpurchased", 403, "", AccountError),
        ("Arrearage", 400, "", AccountError),
        ("PrepaidBillOverdue", 429, "", AccountError),
        ("ModelNotFound", 404, "", PermanentRemoteError),
        ("InternalError", 500, "", TransientRemoteError),
        ("InternalError.Algo", 500, "", TransientRemoteError),
        ("ModelServingError", 503, "", TransientRemoteError),
        ("SomethingNew", 429, "", Throttled),
        ("SomethingNew", 502, "", TransientRemoteError),
        ("SomethingNew", 422, "", PermanentRemoteError),
    ],
)
def test_error_classification_table(code: str, status: int, message: str, expected: type) -> None:
    """Each row of dashscope-api.md's error table maps to its class: code first, HTTP status second."""
    assert error_class(code, status, message) is expected


def test_transient_task_failures() -> None:
    """A FAILED task with InternalError.Timeout may be resubmitted; DataInspectionFailed may not."""
    assert is_transient_task_failure("InternalError.Timeout")
    assert not is_transient_task_failure("DataInspectionFailed")
    assert not is_transient_task_failure(None)
