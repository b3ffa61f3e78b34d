"""Answer bodies shaped field for field like the seed pages' examples, and the broken answers faults need."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ops.simulator.engine import TIMEOUT_MESSAGE, SimTask
from ops.simulator.models import IMAGE_GENERATION, SYNC_GENERATION

UTC8 = timezone(timedelta(hours=8))


def stamp(ts: float) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` in UTC+8, as the service writes its times."""
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def request_id() -> str:
    return str(uuid.uuid4())


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"request_id": request_id(), "code": code, "message": message}, status_code=status)


def oss_error(code: str, message: str, status: int = 403) -> Response:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n  <Message>{message}'
        f"</Message>\n  <RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId>\n"
        "  <HostId>dashscope-result-sim.oss-cn-sim.aliyuncs.com</HostId>\n</Error>\n"
    )
    return Response(xml, status_code=status, media_type="application/xml")


class Dropped(Response):
    """Starts a 200 answer, sends part of the body, then closes the connection (the client sees it cut)."""

    def __init__(self) -> None:
        super().__init__(b'{"request_id": "', media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        raise ConnectionAbortedError("simulated dropped connection")


class Settled(Response):
    """Sends `inner`, then calls `done` however the sending ends: in full, cut (`Dropped`), or the client gone."""

    def __init__(self, inner: Response, done: Callable[[], None]) -> None:
        super().__init__(status_code=inner.status_code)
        self.inner, self.done = inner, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.done()


def malformed(body: dict[str, Any]) -> Response:
    """A 200 whose JSON is cut in half."""
    text = JSONResponse(body).body
    return Response(text[: max(1, len(text) // 2)], media_type="application/json")


def task_body(task: SimTask, now: float, url_for: Callable[[int], str]) -> dict[str, Any]:
    """The `GET /tasks/{id}` answer for a task as of `now`."""
    status = task.status(now)
    output: dict[str, Any] = {"task_id": task.task_id, "task_status": status, "submit_time": stamp(task.created)}
    if task.scheduled is not None and task.scheduled <= now:
        output["scheduled_time"] = stamp(task.scheduled)
    if status in {"SUCCEEDED", "FAILED"} and task.end is not None:
        output["end_time"] = stamp(task.end)
    elif status == "CANCELED" and task.canceled_at is not None:
        output["end_time"] = stamp(task.canceled_at)
    body: dict[str, Any] = {"request_id": request_id(), "output": output}
    if status == "FAILED" and task.failure:
        output.update(code=task.failure[0], message=task.failure[1])
        if not task.model.video:
            output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": task.n}
    elif status == "SUCCEEDED":
        _success(task, output, body, url_for)
    return body


def _success(task: SimTask, output: dict[str, Any], body: dict[str, Any], url_for: Callable[[int], str]) -> None:
    good = [i for i in range(task.n) if i not in task.failed_indices]
    if task.model.video:
        output.update(video_url=url_for(0), orig_prompt=task.prompt, actual_prompt=task.actual_prompt or task.prompt)
        duration = (task.body.get("parameters") or {}).get("duration", 5)
        body["usage"] = {"video_count": 1, "video_duration": duration, "video_ratio": task.size}
    elif task.model.path == IMAGE_GENERATION:
        output["finished"] = True
        output["choices"] = [choice(url_for(i)) for i in good]
        body["usage"] = image_generation_usage(task.size, len(good))
    elif task.model.path == SYNC_GENERATION:  # a sync-only Qwen model's task, found through the task list
        output["choices"] = [choice(url_for(i), typed=False) for i in good]
        body["usage"] = qwen_usage(task.size, len(good))
    else:
        results: list[dict[str, Any]] = []
        for index in range(task.n):
            if index in task.failed_indices:
                results.append(
                    {
                        "code": "InternalError.Timeout",
                        "message": TIMEOUT_MESSAGE,
                    }
                )
                continue
            item = {"url": url_for(index), "orig_prompt": task.prompt}
            if task.actual_prompt:
                item["actual_prompt"] = task.actual_prompt
            results.append(item)
        output["results"] = results
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": len(good), "FAILED": task.n - len(good)}
        body["usage"] = {"image_count": len(good)}


def choice(url: str, *, typed: bool = True) -> dict[str, Any]:
    """One `choices[]` item. Wan's content items say `type: "image"` (003:202-206); Qwen's hold only the image
    (004:188-191, 358-361)."""
    item = {"image": url, "type": "image"} if typed else {"image": url}
    return {"finish_reason": "stop", "message": {"role": "assistant", "content": [item]}}


def image_generation_usage(size: str, images: int) -> dict[str, Any]:
    return {"image_count": images, "input_tokens": 0, "output_tokens": 0, "size": size, "total_tokens": 0}


def qwen_usage(size: str, images: int) -> dict[str, Any]:
    """Qwen's usage: the size as two integers, no tokens (004:368-372)."""
    width, _, height = size.partition("*")
    return {"width": int(width), "height": int(height), "image_count": images}


def sync_body(task: SimTask, urls: list[str]) -> dict[str, Any]:
    """The sync endpoint's answer: Qwen's shape (004:352-373: no `type`, no `finished`) or Wan's (004:519-548)."""
    if task.model.qwen:
        output: dict[str, Any] = {"choices": [choice(u, typed=False) for u in urls]}
        usage = qwen_usage(task.size, len(urls))
    else:
        output = {"choices": [choice(u) for u in urls], "finished": True}
        usage = image_generation_usage(task.size, len(urls))
    return {"output": output, "usage": usage, "request_id": request_id()}


def list_entry(task: SimTask, now: float) -> dict[str, Any]:
    """One `data[]` item of `GET /tasks`: no result URLs, `gmt_create` in epoch milliseconds."""
    return {
        "task_id": task.task_id,
        "status": task.status(now),
        "model_name": task.model.name,
        "gmt_create": int(task.created * 1000),
        "gmt_modified": int((task.end or task.created) * 1000),
        "api_key_id": "ak-" + task.key[-4:],
        "region": "sim",
        "request_id": request_id(),
    }
