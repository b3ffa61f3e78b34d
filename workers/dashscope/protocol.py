"""Request bodies and response parsing for the three create protocols and the task query.

Pure functions, no I/O: `create_body` turns a `GenerationRequest` into the JSON of its model's protocol;
`parse_task` turns a `GET /tasks/{id}` answer into a `TaskState`, whatever the protocol, and `parse_task_list`
reads a `GET /tasks` page. Both are total: an answer of any other shape raises `MalformedAnswer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from config.catalogue import Kind, ModelSpec, Protocol
from workers.requests import GenerationRequest, shown

TERMINAL_UPSTREAM = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
UTC8 = timezone(timedelta(hours=8))


def list_time(epoch_s: float) -> str:
    """An epoch as the task list's `start_time` / `end_time`: `YYYYMMDDhhmmss` in UTC+8, whole seconds."""
    return datetime.fromtimestamp(epoch_s, UTC8).strftime("%Y%m%d%H%M%S")


def upstream_epoch(value: str) -> float | None:
    """The service's `YYYY-MM-DD HH:MM:SS.mmm` (UTC+8) as epoch seconds; None when it is not in that form."""
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC8).timestamp()
    except (TypeError, ValueError):
        return None


def create_body(request: GenerationRequest, spec: ModelSpec) -> dict[str, Any]:
    """The create (or synchronous call) request's JSON body. `n` is always sent: Wan models default to 4, and the
    service bills per image."""
    parameters: dict[str, Any] = {
        "size": request.size,
        "prompt_extend": request.prompt_extend,
        "watermark": request.watermark,
    }
    if request.seed is not None:
        parameters["seed"] = request.seed
    if spec.protocol is Protocol.VIDEO_SYNTHESIS:
        parameters["duration"] = request.duration_s
    else:
        parameters["n"] = request.n

    if spec.protocol in {Protocol.IMAGE_GENERATION, Protocol.MULTIMODAL_GENERATION}:
        parameters["negative_prompt"] = request.negative_prompt
        body_input: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": request.prompt}]}]}
    else:
        body_input = {"prompt": request.prompt}
        if request.negative_prompt:
            body_input["negative_prompt"] = request.negative_prompt
    return {"model": request.model, "input": body_input, "parameters": parameters}


@dataclass(frozen=True)
class ResultItem:
    """One sub-result: a URL on success, or the code and message of a failed sub-image."""

    url: str | None = None
    code: str | None = None
    message: str | None = None
    orig_prompt: str | None = None
    actual_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class TaskState:
    """What a query said about a task. `status` is the upstream string, kept as sent."""

    task_id: str
    status: str
    results: list[ResultItem] = field(default_factory=list)
    code: str | None = None
    message: str | None = None
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_UPSTREAM

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.results if r.url]

    def billed_units(self, kind: Kind, *, requested_duration_s: int | None = None) -> float:
        """What the service bills for this task, in its model's unit (dashscope-api.md): images, from
        `usage.image_count` (the images that succeeded), or seconds of video, from `usage.video_duration`. An answer
        without a usable figure counts its result URLs, or the video's requested duration. Zero unless SUCCEEDED."""
        if self.status != "SUCCEEDED":
            return 0.0
        if kind is Kind.VIDEO:
            return _count(self.usage.get("video_duration"), float(requested_duration_s or 0) if self.urls else 0.0)
        # No more images than the answer has entries: a figure beyond that is not the service's bill.
        return min(_count(self.usage.get("image_count"), float(len(self.urls))), float(len(self.results)))

    def upstream_times(self) -> dict[str, str]:
        times = {"submit_time": self.submit_time, "scheduled_time": self.scheduled_time, "end_time": self.end_time}
        return {k: v for k, v in times.items() if v}


#: The code of a sub-result whose entry was not of the documented shape (its image may exist, unreadable).
MALFORMED_RESULT = "ResultMalformed"


class MalformedAnswer(ValueError):
    """An answer of the service that is not of the documented shape; the client makes it a `RemoteError`."""


def _count(value: Any, fallback: float) -> float:
    """A usage figure: a finite non-negative number (not a bool), else `fallback`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return fallback


def _text(value: Any) -> str | None:
    """A string field: the string, or None for anything else (absent, null, empty, a number, an object)."""
    return value if isinstance(value, str) and value else None


def _item(value: Any) -> ResultItem:
    """One sub-result. Its position is the image's index, so an entry that is not an object, or whose URL is not
    a string, is kept as a failed sub-result that says so: the image is named, never silently skipped."""
    if not isinstance(value, dict):
        return ResultItem(code=MALFORMED_RESULT, message=f"a result entry that is not an object: {shown(value)}")
    url = value.get("url")
    if url is not None and _text(url) is None:
        return ResultItem(code=MALFORMED_RESULT, message=f"a result URL that is not a non-empty string: {shown(url)}")
    return ResultItem(
        url=_text(url),
        code=_text(value.get("code")),
        message=_text(value.get("message")),
        orig_prompt=_text(value.get("orig_prompt")),
        actual_prompt=_text(value.get("actual_prompt")),
    )


def _choices(choices: list[Any]) -> list[ResultItem]:
    """wan2.6's `choices`: the image parts of each choice's message, and a failed choice's code."""
    items: list[ResultItem] = []
    for choice in choices:
        if not isinstance(choice, dict):
            items.append(ResultItem(code=MALFORMED_RESULT, message=f"a choice that is not an object: {shown(choice)}"))
            continue
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            image = part.get("image") if isinstance(part, dict) else None
            if image is not None:
                items.append(_item({"url": image}))
        if _text(choice.get("code")):
            items.append(ResultItem(code=_text(choice.get("code")), message=_text(choice.get("message_text"))))
    return items


def _results(output: dict[str, Any]) -> list[ResultItem]:
    video_url = output.get("video_url")
    if video_url is not None:  # video protocol
        item = _item({"url": video_url})
        return [
            replace(
                item, orig_prompt=_text(output.get("orig_prompt")), actual_prompt=_text(output.get("actual_prompt"))
            )
        ]
    if "choices" in output:  # wan2.6 image-generation protocol
        choices = output["choices"]
        return _choices(choices if isinstance(choices, list) else [])
    results = output.get("results")  # old image protocol
    return [_item(r) for r in (results if isinstance(results, list) else [])]


def parse_generation(body: Any) -> TaskState:
    """A synchronous call's answer (004:175-204, 352-374: `output.choices[]`, `usage`, no task) as the state of
    a task that SUCCEEDED, so that it is finalized like any other. Total: an answer without a `choices` list
    raises `MalformedAnswer`."""
    output = body.get("output") if isinstance(body, dict) else None
    choices = output.get("choices") if isinstance(output, dict) else None
    if not isinstance(choices, list):
        raise MalformedAnswer(f"a synchronous answer without output.choices: {shown(body)}")
    usage = body.get("usage")
    return TaskState(
        task_id="",
        status="SUCCEEDED",
        results=_choices(choices),
        usage=usage if isinstance(usage, dict) else {},
        request_id=_text(body.get("request_id")),
    )


def parse_task(body: Any) -> TaskState:
    """A query answer as a `TaskState`, whatever its protocol. Total: any other shape than the documented one
    raises `MalformedAnswer` (no task id or status), and fields of the wrong type are read as absent."""
    output = body.get("output") if isinstance(body, dict) else None
    if not isinstance(output, dict):
        raise MalformedAnswer(f"an answer without an output object: {shown(body)}")
    task_id, status = _text(output.get("task_id")), _text(output.get("task_status"))
    if task_id is None or status is None:
        raise MalformedAnswer(f"an output without a task_id and task_status: {shown(output)}")
    usage = body.get("usage")
    return TaskState(
        task_id=task_id,
        status=status,
        results=_results(output),
        code=_text(output.get("code")),
        message=_text(output.get("message")),
        submit_time=_text(output.get("submit_time")),
        scheduled_time=_text(output.get("scheduled_time")),
        end_time=_text(output.get("end_time")),
        usage=usage if isinstance(usage, dict) else {},
        request_id=_text(body.get("request_id")),
    )


@dataclass(frozen=True)
class ListedTask:
    task_id: str
    created_at: float  # epoch seconds (the list's `gmt_create` is in milliseconds)
    status: str = ""  # as listed; "" when the entry has none (reconciliation needs only the id and time)


def parse_task_list(answer: Any) -> tuple[list[ListedTask], int]:
    """A `GET /tasks` answer as its tasks and its page count. Total: a shape that is not the documented one, or
    an entry without a string id and a numeric creation time, raises `MalformedAnswer`. Reconciliation must
    not decide that a lost create made no task from a list it could not read in full."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise MalformedAnswer(f"a task list without a data list: {shown(answer)}")
    tasks = []
    for entry in data:
        task_id = _text(entry.get("task_id")) if isinstance(entry, dict) else None
        created = entry.get("gmt_create") if isinstance(entry, dict) else None
        if task_id is None or isinstance(created, bool) or not isinstance(created, int | float):
            raise MalformedAnswer(f"a task list entry without task_id and gmt_create: {shown(entry)}")
        tasks.append(ListedTask(task_id, float(created) / 1000, _text(entry.get("status")) or ""))
    return tasks, _page_count(answer.get("total_page"))


def _page_count(value: Any) -> int:
    """`total_page` as an integer of at least 1: absent means one page; `2`, `2.0` and `"2"` are 2; anything
    else is refused, since reading fewer pages than there are could miss the lost create's task."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(1, value)
    raise MalformedAnswer(f"a task list whose total_page is not a page count: {shown(value)}")
