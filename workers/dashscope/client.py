"""The DashScope client: create, query and cancel tasks over an injected `httpx.Client`.

Every failure leaves here as one of `workers.errors`' `RemoteError`s: HTTP error answers are classified
by code (`classify.error_class`), transport faults are translated most specific first, and a create
whose request may have reached the service (a timeout after sending, an answer dropped, undecodable or not
JSON, a 2xx without a task id, a 5xx from a gateway rather than the service's own JSON error) raises
`CreateOutcomeUnknown` so the caller reconciles instead of paying twice. Answers of any other shape than the
documented one are `TransientRemoteError("MalformedResponse")`, never a crash (`protocol.py` parses totally).
The API key is sent in a header and appears in no message.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx

from config.catalogue import ModelSpec
from workers.dashscope.classify import error_class
from workers.dashscope.protocol import (
    MALFORMED_RESULT,
    ListedTask,
    MalformedAnswer,
    TaskState,
    create_body,
    parse_generation,
    parse_task,
    parse_task_list,
)
from workers.errors import CreateOutcomeUnknown, RemoteError, Throttled, TransientRemoteError
from workers.requests import GenerationRequest

#: A synchronous call's phases, each bounded (`DashScopeClient._within`): taking a pooled connection (the lane's
#: pool is as large as its threads, so this is only a guard), connecting, sending the small body, and reading the
#: answer once its first byte came (the images are URLs: the answer is small).
CALL_POOL_S = 5.0
CALL_CONNECT_S = 10.0
CALL_WRITE_S = 30.0
ANSWER_BODY_S = 30.0
ANSWER_MAX_BYTES = 4 * 1024 * 1024
#: Codes of a synchronous call's error answer that say the generation may have gone on (a gateway gave up waiting).
#: Exact: the service's own `InternalError.Timeout` says the generation failed (not billed) and stays transient.
_CALL_TIMEOUT_CODES = frozenset({"RequestTimeOut", "RequestTimeout", "Timeout"})


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def call_bound_s(timeout_s: float) -> float:
    """The longest a synchronous call with `timeout_s` can take, start to end (`DashScopeClient._within`): the
    pool, the connect and the send, the answer's window (`timeout_s` + `ANSWER_BODY_S`), and the one read past it
    that the check after each read can overrun by. Not counted, as no timeout of httpx covers them: resolving the
    host's name, and an answer head trickled in (h11 caps a head at 16 KiB); the lease's margin absorbs those."""
    return CALL_POOL_S + CALL_CONNECT_S + CALL_WRITE_S + timeout_s + ANSWER_BODY_S + timeout_s


#: The longest `Retry-After` believed; a larger one (or `inf`) is read as this.
RETRY_AFTER_MAX_S = 3600.0


def _retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds, within [0, RETRY_AFTER_MAX_S]; None when absent or not a finite number."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S) if math.isfinite(seconds) else None


def _error_from_response(response: httpx.Response) -> RemoteError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"HTTP{response.status_code}")
    message = str(body.get("message") or response.reason_phrase or "")
    cls = error_class(code, response.status_code, message)
    if cls is Throttled:
        return Throttled(
            code,
            message,
            http_status=response.status_code,
            request_id=body.get("request_id"),
            retry_after_s=_retry_after_s(response),
        )
    return cls(code, message, http_status=response.status_code, request_id=body.get("request_id"))


def _dashscope_error(response: httpx.Response) -> bool:
    """Whether an error answer is the service's own (a JSON object with a `code`), not a proxy's or gateway's."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("code"), str) and bool(body["code"])


class DashScopeClient:
    """One account key against one base URL. Thread-safe as far as the `httpx.Client` is."""

    def __init__(self, http: httpx.Client, *, base_url: str, api_key: str, workspace: str | None = None) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        if workspace:
            self._headers["X-DashScope-WorkSpace"] = workspace

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        creates: bool = False,
        asynchronous: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """One request. `creates`: it may make something billed, so an answer that may have been lost after the
        request arrived is `CreateOutcomeUnknown`; `asynchronous` (with `creates`): an async create's header.
        `timeout_s`: a synchronous call's wait for its answer, and the whole call is over within
        `call_bound_s(timeout_s)` of its start, whatever the network does."""
        headers = dict(self._headers)
        if creates and asynchronous:
            headers["X-DashScope-Async"] = "enable"
        try:
            if timeout_s is None:
                response = self._http.request(
                    method, self._base_url + path, json=json_body, params=params, headers=headers
                )
            else:
                response = self._within(method, path, json_body, headers, timeout_s)
        except httpx.PoolTimeout as exc:  # no connection was free: nothing was sent (a TimeoutException, caught first)
            raise TransientRemoteError("PoolTimeout", f"no free connection to DashScope for {method} {path}") from exc
        except httpx.ConnectError as exc:  # nothing reached the service
            raise TransientRemoteError("ConnectError", f"cannot connect to DashScope: {exc}") from exc
        except httpx.ConnectTimeout as exc:
            raise TransientRemoteError("ConnectTimeout", "connecting to DashScope timed out") from exc
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # The request may have been received: for a create, the task may exist.
            kind = type(exc).__name__
            if creates:
                raise CreateOutcomeUnknown(kind, f"create {path} got no answer ({kind})") from exc
            raise TransientRemoteError(kind, f"{method} {path} got no answer ({kind})") from exc
        except httpx.DecodingError as exc:  # answered, but the body cannot be decoded: for a create, a task may exist
            if creates:
                raise CreateOutcomeUnknown("DecodingError", f"create {path} answered undecodably: {exc}") from exc
            raise TransientRemoteError("DecodingError", f"{method} {path} answered undecodably: {exc}") from exc
        except httpx.HTTPError as exc:  # never sent (a bad URL or header, a proxy refusing, redirects): no task
            raise TransientRemoteError(type(exc).__name__, f"{method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            error = _error_from_response(response)
            if creates and response.status_code >= 500 and not _dashscope_error(response):
                # A gateway's 502/504, not the service's own refusal: the create may have reached the service.
                raise CreateOutcomeUnknown(error.code, f"create {path} answered by a gateway: {error.message}")
            if creates and not asynchronous and (response.status_code == 504 or error.code in _CALL_TIMEOUT_CODES):
                # A synchronous call given up by a gateway in front of the model: the generation may go on, billed.
                raise CreateOutcomeUnknown(error.code, f"synchronous call {path} timed out upstream: {error.message}")
            raise error
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError) as exc:
            if creates:
                raise CreateOutcomeUnknown("MalformedResponse", f"create {path} answered non-JSON") from exc
            raise TransientRemoteError("MalformedResponse", f"{method} {path} answered non-JSON") from exc
        if not isinstance(body, dict):
            what = f"{method} {path} answered {type(body).__name__}"
            raise (CreateOutcomeUnknown if creates else TransientRemoteError)("MalformedResponse", what)
        return body

    def _within(
        self, method: str, path: str, json_body: dict[str, Any] | None, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        """A synchronous call, over within `call_bound_s(timeout_s)`: taking a pooled connection, connecting and
        sending are each bounded; every read waits at most `timeout_s`; and the whole answer, head and body together
        (a gateway may send its head early and the body once the images exist), must be in within `timeout_s` +
        `ANSWER_BODY_S` of the send, checked after every read, so an answer trickled in byte by byte cannot run on
        without end. A read that completes the body is never refused. Past that the connection is dropped, as
        `httpx.ReadTimeout`: an outcome the caller must treat as unknown."""
        timeout = httpx.Timeout(connect=CALL_CONNECT_S, write=CALL_WRITE_S, pool=CALL_POOL_S, read=timeout_s)
        request = self._http.build_request(
            method, self._base_url + path, json=json_body, headers=headers, timeout=timeout
        )
        ends_at = time.monotonic() + timeout_s + ANSWER_BODY_S
        response = self._http.send(request, stream=True)
        try:
            expected = _content_length(response)
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > ANSWER_MAX_BYTES:
                    raise httpx.ReadError(f"the answer is over {ANSWER_MAX_BYTES:,} bytes", request=request)
                if expected is not None and response.num_bytes_downloaded >= expected:
                    break  # complete, however late its last byte came
                if time.monotonic() > ends_at:
                    raise httpx.ReadTimeout("the answer was not complete in time", request=request)
        finally:
            response.close()
        # The bytes are decoded already (gzip undone): the headers that described their encoding no longer apply.
        framing = {"content-length", "transfer-encoding", "content-encoding"}
        kept = {k: v for k, v in response.headers.items() if k.lower() not in framing}
        return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=request)

    def create_task(self, request: GenerationRequest, spec: ModelSpec) -> tuple[str, str | None]:
        """Create the task; returns `(task_id, request_id)`."""
        path = spec.create_path
        body = self._send("POST", path, json_body=create_body(request, spec), creates=True)
        output = body.get("output")
        task_id = output.get("task_id") if isinstance(output, dict) else None
        if not isinstance(task_id, str) or not task_id:
            # Answered 2xx: a task may well exist. Reconciliation finds it; the create is not sent again blindly.
            raise CreateOutcomeUnknown("MalformedResponse", f"create {path} answered without a task_id")
        request_id = body.get("request_id")
        return task_id, request_id if isinstance(request_id, str) else None

    def generate(self, request: GenerationRequest, spec: ModelSpec, *, timeout_s: float) -> TaskState:
        """A synchronous call: the images in the answer, as the state of a task that SUCCEEDED. The connection is
        held for the whole generation (`timeout_s` to the first byte of the answer). An answer that may have been
        lost after the request arrived, or a 2xx without images, is `CreateOutcomeUnknown`: the service may have
        made and billed the images, and there is no task to look them up by."""
        path = spec.create_path
        body = self._send(
            "POST", path, json_body=create_body(request, spec), creates=True, asynchronous=False, timeout_s=timeout_s
        )
        try:
            state = parse_generation(body)
        except MalformedAnswer as exc:
            raise CreateOutcomeUnknown("MalformedResponse", f"synchronous call {path}: {exc}") from exc
        if not state.urls and not any(r.code and r.code != MALFORMED_RESULT for r in state.results):
            # Answered, with nothing to fetch and no failure named: images may have been made (and billed) that
            # this answer does not carry. Never read as "nothing made", which a retry would pay for again.
            raise CreateOutcomeUnknown("NoImages", f"synchronous call {path} answered without an image URL")
        return state

    def get_task(self, task_id: str) -> TaskState:
        body = self._send("GET", f"/tasks/{task_id}")
        try:
            return parse_task(body)
        except MalformedAnswer as exc:
            raise TransientRemoteError("MalformedResponse", f"task {task_id}: {exc}") from exc

    def cancel_task(self, task_id: str) -> None:
        self._send("POST", f"/tasks/{task_id}/cancel")

    def list_tasks(self, **params: Any) -> tuple[list[ListedTask], int]:
        """One page of the task list: its tasks and the number of pages."""
        try:
            return parse_task_list(self._send("GET", "/tasks", params=params))
        except MalformedAnswer as exc:
            raise TransientRemoteError("MalformedResponse", f"task list: {exc}") from exc
