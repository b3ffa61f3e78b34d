"""The DashScope client: create, query and cancel tasks over an injected `httpx.Client`.

Every failure leaves here as one of `workers.errors`' `RemoteError`s: HTTP error answers are classified
by code (`classify.error_class`), transport faults are translated most specific first, and a create
whose request may have reached the service raises `CreateOutcomeUnknown` so the caller reconciles
instead of paying twice. The API key is sent in a header and appears in no message.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from config.catalogue import model_spec
from workers.dashscope.classify import error_class
from workers.dashscope.protocol import TaskState, create_body, parse_task
from workers.errors import CreateOutcomeUnknown, RemoteError, Throttled, TransientRemoteError
from workers.requests import GenerationRequest


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
    ) -> dict[str, Any]:
        headers = dict(self._headers)
        if creates:
            headers["X-DashScope-Async"] = "enable"
        try:
            response = self._http.request(method, self._base_url + path, json=json_body, params=params, headers=headers)
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
        except httpx.HTTPError as exc:
            raise TransientRemoteError(type(exc).__name__, f"{method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError) as exc:
            if creates:
                raise CreateOutcomeUnknown("MalformedResponse", f"create {path} answered non-JSON") from exc
            raise TransientRemoteError("MalformedResponse", f"{method} {path} answered non-JSON") from exc
        if not isinstance(body, dict):
            raise TransientRemoteError("MalformedResponse", f"{method} {path} answered {type(body).__name__}")
        return body

    def create_task(self, request: GenerationRequest) -> tuple[str, str | None]:
        """Create the task; returns `(task_id, request_id)`."""
        path = model_spec(request.model).create_path
        body = self._send("POST", path, json_body=create_body(request), creates=True)
        try:
            return str(body["output"]["task_id"]), body.get("request_id")
        except (KeyError, TypeError) as exc:
            raise CreateOutcomeUnknown("MalformedResponse", f"create {path} answered without a task_id") from exc

    def get_task(self, task_id: str) -> TaskState:
        body = self._send("GET", f"/tasks/{task_id}")
        try:
            return parse_task(body)
        except (KeyError, TypeError) as exc:
            raise TransientRemoteError("MalformedResponse", f"task {task_id}: answer lacks {exc}") from exc

    def cancel_task(self, task_id: str) -> None:
        self._send("POST", f"/tasks/{task_id}/cancel")

    def list_tasks(self, **params: Any) -> dict[str, Any]:
        return self._send("GET", "/tasks", params=params)
