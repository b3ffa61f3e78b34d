"""The DashScope client over an httpx MockTransport: what it sends, and how it maps every kind of answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.catalogue import Kind, shipped_catalogue
from workers.dashscope import DashScopeClient
from workers.dashscope.classify import error_class, is_transient_task_failure
from workers.dashscope.protocol import TaskState, parse_task
from workers.errors import (
    AccountError,
    CreateOutcomeUnknown,
    PermanentRemoteError,
    RemoteError,
    Throttled,
    TransientRemoteError,
)
from workers.requests import GenerationRequest, RequestInput, validate_request

SHIPPED = shipped_catalogue()

BASE = "https://dashscope-intl.aliyuncs.com/api/v1"


def client(handler: Callable[[httpx.Request], httpx.Response]) -> DashScopeClient:
    return DashScopeClient(httpx.Client(transport=httpx.MockTransport(handler)), base_url=BASE, api_key="k-123")


def request_for(model: str, **fields: str):  # type: ignore[no-untyped-def]
    return validate_request(RequestInput(prompt="a cat", model=model, **fields), catalogue=SHIPPED, default_model=model)


def create(client: DashScopeClient, request: GenerationRequest) -> tuple[str, str | None]:
    return client.create_task(request, shipped_catalogue().spec(request.model))


def test_old_protocol_create_sends_async_header_key_and_explicit_n() -> None:
    """A create goes to the model's path with the async header, the bearer key and n spelled out."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": "r1", "output": {"task_id": "t1", "task_status": "PENDING"}})

    task_id, request_id = create(client(handler), request_for("wan2.5-t2i-preview", seed="3"))
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

    create(client(handler), request_for("wan2.6-t2i"))
    assert bodies[0]["input"] == {"messages": [{"role": "user", "content": [{"text": "a cat"}]}]}
    assert bodies[0]["parameters"]["negative_prompt"] == ""  # type: ignore[index]


def test_video_create_sends_duration_not_n() -> None:
    """Video goes to video-synthesis with a duration."""
    bodies: list[dict[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"output": {"task_id": "t3", "task_status": "PENDING"}})

    create(client(handler), request_for("wan2.5-t2v-preview", size="1280*720", duration="10"))
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
        create(client(handler), request_for("wan2.5-t2i-preview"))
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
        create(client(handler), request_for("wan2.5-t2i-preview"))
    with pytest.raises(TransientRemoteError) as info:
        client(handler).get_task("t")
    assert not isinstance(info.value, CreateOutcomeUnknown)


def test_connect_error_on_create_is_plainly_transient() -> None:
    """A create that never connected cannot have created a task."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientRemoteError) as info:
        create(client(handler), request_for("wan2.5-t2i-preview"))
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


IMAGES = {"results": [{"url": "https://h/0.png"}, {"code": "InternalError.Timeout"}, {"url": "https://h/2.png"}]}
VIDEO = {"video_url": "https://h/v.mp4"}


@pytest.mark.parametrize(
    ("status", "output", "usage", "kind", "units"),
    [
        ("SUCCEEDED", IMAGES, {"image_count": 2}, Kind.IMAGE, 2.0),
        ("SUCCEEDED", IMAGES, {}, Kind.IMAGE, 2.0),  # no usage: the images that came back
        ("SUCCEEDED", IMAGES, {"image_count": "2"}, Kind.IMAGE, 2.0),  # not a number: the same
        ("SUCCEEDED", IMAGES, {"image_count": float("inf")}, Kind.IMAGE, 2.0),  # not finite: the same
        ("SUCCEEDED", IMAGES, {"image_count": 10**6}, Kind.IMAGE, 3.0),  # never more than the answer's entries
        ("SUCCEEDED", VIDEO, {"video_count": 1, "video_duration": 10, "video_ratio": "1280*720"}, Kind.VIDEO, 10.0),
        ("SUCCEEDED", VIDEO, {"video_count": 1}, Kind.VIDEO, 5.0),  # no duration: the one asked for
        ("FAILED", {"code": "InternalError.Algo"}, {"image_count": 0}, Kind.IMAGE, 0.0),
        ("RUNNING", {}, {}, Kind.VIDEO, 0.0),
    ],
)
def test_billed_units_are_images_or_seconds_of_video_from_the_usage(
    status: str, output: dict[str, object], usage: dict[str, object], kind: Kind, units: float
) -> None:
    """A succeeded task bills `usage.image_count` images (at most as many as its answer has entries) or
    `usage.video_duration` seconds (without a finite figure: its result URLs, or the duration asked for); a task
    that did not succeed bills nothing."""
    body = {"output": {"task_id": "t", "task_status": status, **output}, "usage": usage}
    assert parse_task(body).billed_units(kind, requested_duration_s=5) == units


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
        ("AccessDenied", 403, "Access denied.", AccountError),
        # A request-shape mistake (003:386): that request's fault, not the account's.
        ("AccessDenied", 403, "current user api does not support synchronous calls", PermanentRemoteError),
        ("AccessDenied", 403, "Current user API does not support asynchronous calls", PermanentRemoteError),
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


# --- every answer of the service, however shaped, is a value or a RemoteError (never a crash) ---------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
result_items = st.fixed_dictionaries({}, optional={"url": json_values, "code": json_values, "message": json_values})
choices = st.fixed_dictionaries(
    {},
    optional={
        "message": st.fixed_dictionaries(
            {},
            optional={
                "content": st.lists(st.dictionaries(st.just("image"), json_values) | json_values, max_size=3)
                | json_values
            },
        )
        | json_values,
        "code": json_values,
    },
)
# Answers shaped like the documented ones, each field of any type: deeper than free JSON reaches.
answers = st.fixed_dictionaries(
    {},
    optional={
        "output": st.fixed_dictionaries(
            {},
            optional={
                "task_id": st.text(min_size=1, max_size=8) | json_values,
                "task_status": st.sampled_from(["PENDING", "RUNNING", "SUCCEEDED", "FAILED"]) | json_values,
                "results": st.lists(result_items | json_values, max_size=3) | json_values,
                "choices": st.lists(choices | json_values, max_size=3) | json_values,
                "video_url": st.text(max_size=12) | json_values,
                "code": json_values,
                "end_time": json_values,
            },
        )
        | json_values,
        "usage": json_values,
        "request_id": json_values,
        "code": json_values,
        "data": st.lists(
            st.fixed_dictionaries({}, optional={"task_id": json_values, "gmt_create": st.integers() | json_values})
            | json_values,
            max_size=3,
        )
        | json_values,
        "total_page": json_values,
    },
)
statuses = st.sampled_from([200, 202, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504])


def answering(status: int, body: object) -> DashScopeClient:
    payload = json.dumps(body).encode()  # NaN and Infinity included: Python's json writes them
    return client(lambda r: httpx.Response(status, content=payload, headers={"content-type": "application/json"}))


@given(statuses, answers | json_values)
def test_any_query_answer_is_a_task_state_or_a_remote_error(status: int, body: object) -> None:
    """Whatever a task query is answered, the client returns a task state with a text id and status, text URLs
    and a usage object, or raises a RemoteError; nothing else escapes."""
    try:
        state = answering(status, body).get_task("t-1")
    except RemoteError:
        return
    assert isinstance(state.task_id, str) and state.task_id and isinstance(state.status, str) and state.status
    assert all(r.url is None or isinstance(r.url, str) for r in state.results)
    assert all(r.code is None or isinstance(r.code, str) for r in state.results)
    assert isinstance(state.usage, dict)


def assert_the_services_own_refusal(status: int, body: object) -> None:
    """A create or call read as refused (nothing made, so it may be sent again) must be the service's own refusal:
    an error status, and for a 5xx the service's JSON error rather than a gateway's page."""
    assert status >= 400, "a 2xx answer was taken for a refusal: it would be sent again"
    own_error = isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"]
    assert status < 500 or own_error, "a gateway's 5xx was taken for the service's refusal"


@given(statuses, answers | json_values)
def test_any_create_answer_is_a_task_id_or_an_error_that_says_whether_a_task_may_exist(
    status: int, body: object
) -> None:
    """A 2xx create answer without a text task id, and a 5xx that is not the service's own JSON error, may
    stand for a task that exists: CreateOutcomeUnknown (reconcile, never create blindly again)."""
    try:
        task_id, request_id = create(answering(status, body), request_for("wan2.5-t2i-preview"))
    except CreateOutcomeUnknown:
        return
    except RemoteError:
        assert_the_services_own_refusal(status, body)
        return
    assert status < 400 and isinstance(task_id, str) and task_id
    assert request_id is None or isinstance(request_id, str)


@given(statuses, answers | json_values)
def test_any_task_list_answer_is_read_in_full_or_refused(status: int, body: object) -> None:
    """A task list page is its tasks (text id, numeric creation time, status text) and a page count of at least 1,
    or a RemoteError: an entry that cannot be read is never skipped (it could be the lost create's task)."""
    try:
        tasks, pages = answering(status, body).list_tasks(page_no=1)
    except RemoteError:
        return
    assert pages >= 1 and all(isinstance(t.task_id, str) and t.task_id for t in tasks)
    assert all(isinstance(t.status, str) for t in tasks)  # "" when the entry has no status string
    entries = body.get("data") if isinstance(body, dict) else None
    assert isinstance(entries, list) and len(tasks) == len(entries)


@given(st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=12))
def test_any_retry_after_header_is_a_bounded_wait_or_ignored(value: str) -> None:
    """Retry-After of any text (Unicode digits, inf, nan, negative) is ignored or read as 0..3600 s."""
    answer = client(
        lambda r: httpx.Response(429, json={"code": "Throttling"}, headers={"Retry-After": value.encode("latin-1")})
    )
    with pytest.raises(Throttled) as caught:
        answer.get_task("t-1")
    wait = caught.value.retry_after_s
    assert wait is None or 0.0 <= wait <= 3600.0


@pytest.mark.parametrize(("total_page", "pages"), [(None, 1), (2, 2), (2.0, 2), ("2", 2), (0, 1)])
def test_a_task_list_page_count_is_read_in_any_integral_form(total_page: object, pages: int) -> None:
    """`total_page` absent, 2, 2.0 or "2": the client reads every page there is (missing one could miss a lost
    create's task and pay twice)."""
    answer = {"data": [{"task_id": "t-1", "gmt_create": 1_700_000_000_000}], "total_page": total_page}
    tasks, read = answering(200, answer).list_tasks(page_no=1)
    assert read == pages and [t.task_id for t in tasks] == ["t-1"] and tasks[0].created_at == 1_700_000_000.0


@pytest.mark.parametrize("total_page", ["two", 2.5, True, [2]])
def test_a_task_list_page_count_that_is_no_count_is_refused(total_page: object) -> None:
    """A `total_page` that is not a page count is a malformed answer (reconciliation waits), never one page."""
    with pytest.raises(TransientRemoteError, match="total_page"):
        answering(200, {"data": [], "total_page": total_page}).list_tasks(page_no=1)


#: The pages' synchronous answers: Qwen's (004:352-373) and wan2.6's (004:519-548).
QWEN_SYNC_ANSWER = {
    "output": {
        "choices": [
            {"finish_reason": "stop", "message": {"content": [{"image": "https://x/a.png"}], "role": "assistant"}}
        ]
    },
    "usage": {"height": 2048, "image_count": 1, "width": 2048},
    "request_id": "d0250a3d",
}
WAN_SYNC_ANSWER = {
    "output": {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": [{"image": "https://x/b.png", "type": "image"}]},
            }
        ],
        "finished": True,
    },
    "usage": {"image_count": 1, "size": "1280*1280", "input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    "request_id": "50b57166",
}


@pytest.mark.parametrize("answer", [QWEN_SYNC_ANSWER, WAN_SYNC_ANSWER])
def test_a_synchronous_call_is_sent_without_the_async_header_and_read_as_a_success(answer: dict[str, object]) -> None:
    """A synchronous model's call goes to multimodal-generation without `X-DashScope-Async` (the service would
    refuse it), with the call's own timeout, and either page's answer shape reads as a SUCCEEDED state with its
    image URL and the usage the service bills by."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    request = request_for("qwen-image-2.0-pro")
    state = client(handler).generate(request, SHIPPED.spec(request.model), timeout_s=123)
    assert seen[0].url.path == "/api/v1/services/aigc/multimodal-generation/generation"
    assert "X-DashScope-Async" not in seen[0].headers
    assert seen[0].extensions["timeout"]["read"] == 123
    assert state.status == "SUCCEEDED" and len(state.urls) == 1 and state.billed_units(Kind.IMAGE) == 1.0


@given(statuses, answers | json_values)
def test_any_synchronous_answer_is_images_or_an_error_that_says_whether_they_may_exist(
    status: int, body: object
) -> None:
    """A synchronous call's answer is a SUCCEEDED state, the service's own refusal (nothing made), or
    CreateOutcomeUnknown when images may exist that the answer does not carry (a 2xx without `choices`, a
    gateway's 5xx): the caller must never take those for a refusal and call again."""
    request = request_for("qwen-image-2.0")
    try:
        state = answering(status, body).generate(request, SHIPPED.spec(request.model), timeout_s=60)
    except CreateOutcomeUnknown:
        return
    except RemoteError:
        assert_the_services_own_refusal(status, body)
        return
    assert status < 400 and state.status == "SUCCEEDED"
    assert all(r.url is None or isinstance(r.url, str) for r in state.results)
    # Read as made: it has an image to fetch, or names the failure of what it lacks (never "nothing, silently").
    assert state.urls or any(r.code and r.code != "ResultMalformed" for r in state.results)


def sync_call(handler: Callable[[httpx.Request], httpx.Response]) -> TaskState:
    request = request_for("qwen-image-2.0")
    return client(handler).generate(request, SHIPPED.spec(request.model), timeout_s=60)


@pytest.mark.parametrize(
    "body",
    [
        {"output": {"choices": []}, "usage": {"image_count": 1}},
        {"output": {"choices": [{"message": {"content": [{"text": "here you are"}]}}]}},
        {"output": {"choices": [{"message": {"content": [{"image": ""}]}}]}},
    ],
)
def test_a_synchronous_answer_without_an_image_is_an_unknown_outcome(body: dict[str, object]) -> None:
    """A 200 that carries no image URL and names no failure may stand for images made (and billed) that it does
    not carry: the call's outcome is unknown, never "nothing made" (which a retry would pay for again)."""
    with pytest.raises(CreateOutcomeUnknown, match="without an image URL"):
        sync_call(lambda r: httpx.Response(200, json=body))


def test_a_synchronous_call_given_up_by_a_gateway_is_an_unknown_outcome_but_an_internal_error_is_not() -> None:
    """A synchronous call answered 504 `RequestTimeOut` was given up while the generation may go on (billed): its
    outcome is unknown. The service's own 500 `InternalError` says the generation failed: try again."""
    timed_out = {"code": "RequestTimeOut", "message": "The request timed out."}
    with pytest.raises(CreateOutcomeUnknown):
        sync_call(lambda r: httpx.Response(504, json=timed_out))
    for code in ("InternalError", "InternalError.Timeout"):
        failed = {"code": code, "message": "An internal error has occured."}
        with pytest.raises(TransientRemoteError) as caught:
            sync_call(lambda r, failed=failed: httpx.Response(500, json=failed))  # type: ignore[misc]
        assert not isinstance(caught.value, CreateOutcomeUnknown), code


def test_no_free_connection_is_a_plain_transient_error_since_nothing_was_sent() -> None:
    """Waiting for a pooled connection timed out: nothing left the process, so neither a create nor a synchronous
    call is an unknown outcome (which would cost a reconciliation, or end a call as possibly billed)."""

    def no_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection free", request=request)

    with pytest.raises(TransientRemoteError) as caught:
        sync_call(no_connection)
    assert caught.value.code == "PoolTimeout" and not isinstance(caught.value, CreateOutcomeUnknown)
    with pytest.raises(TransientRemoteError) as again:
        create(client(no_connection), request_for("wan2.5-t2i-preview"))
    assert not isinstance(again.value, CreateOutcomeUnknown)


def test_an_answer_trickled_in_is_cut_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that sends the answer's head and then one byte a while apart, each within the read timeout: the
    call ends (outcome unknown) within the body's wall-clock bound, not when the server is done."""
    monkeypatch.setattr("workers.dashscope.client.ANSWER_BODY_S", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
            while not stop.wait(0.3):
                try:
                    connection.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    http = httpx.Client()
    port = server.getsockname()[1]
    trickled = DashScopeClient(http, base_url=f"http://127.0.0.1:{port}/api/v1", api_key="k")
    request = request_for("qwen-image-2.0")
    started = time.monotonic()
    try:
        with pytest.raises(CreateOutcomeUnknown, match="ReadTimeout"):
            trickled.generate(request, SHIPPED.spec(request.model), timeout_s=1)
        assert time.monotonic() - started < 3.5  # the window is 1 + 1 s, plus at most one read of 1 s
    finally:
        stop.set()
        http.close()
        server.close()
        thread.join(5)


def test_an_answer_whose_head_came_early_is_taken_whole_however_late_its_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that sends the answer's head at once and its body when the images exist, past the answer window's
    wall clock: the read that completes the body is never refused (refusing it would throw away billed images)."""
    monkeypatch.setattr("workers.dashscope.client.ANSWER_BODY_S", 0.1)
    answer = json.dumps(QWEN_SYNC_ANSWER).encode()
    server = socket.create_server(("127.0.0.1", 0))

    def late_body() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(answer)}\r\n\r\n"
            connection.sendall(head.encode())
            half = len(answer) // 2
            for part in (answer[:half], answer[half:]):  # the last arrives at 1.2 s: past the window of 1 + 0.1 s,
                time.sleep(0.6)  # each read within the read timeout of 1 s
                connection.sendall(part)

    thread = threading.Thread(target=late_body, daemon=True)
    thread.start()
    http = httpx.Client()
    late = DashScopeClient(http, base_url=f"http://127.0.0.1:{server.getsockname()[1]}/api/v1", api_key="k")
    request = request_for("qwen-image-2.0")
    try:
        state = late.generate(request, SHIPPED.spec(request.model), timeout_s=1.0)
        assert state.urls == ["https://x/a.png"]
    finally:
        http.close()
        server.close()
        thread.join(5)
