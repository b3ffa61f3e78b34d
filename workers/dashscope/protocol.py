"""Request bodies and response parsing for the three create protocols and the task query.

Pure functions, no I/O: `create_body` turns a `GenerationRequest` into the JSON of its model's protocol;
`parse_task` turns a `GET /tasks/{id}` answer into a `TaskState`, whatever the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from config.catalogue import Protocol, model_spec
from workers.requests import GenerationRequest

TERMINAL_UPSTREAM = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
UTC8 = timezone(timedelta(hours=8))


def upstream_epoch(value: str) -> float | None:
    """The service's `YYYY-MM-DD HH:MM:SS.mmm` (UTC+8) as epoch seconds; None when it is not in that form."""
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC8).timestamp()
    except (TypeError, ValueError):
        return None


def create_body(request: GenerationRequest) -> dict[str, Any]:
    """The create request's JSON body. `n` is always sent: the service defaults to 4, and bills per image."""
    spec = model_spec(request.model)
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

    if spec.protocol is Protocol.IMAGE_GENERATION:
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

    def upstream_times(self) -> dict[str, str]:
        times = {"submit_time": self.submit_time, "scheduled_time": self.scheduled_time, "end_time": self.end_time}
        return {k: v for k, v in times.items() if v}


def _results(output: dict[str, Any]) -> list[ResultItem]:
    if output.get("video_url"):  # video protocol
        return [
            ResultItem(
                url=output["video_url"],
                orig_prompt=output.get("orig_prompt"),
                actual_prompt=output.get("actual_prompt"),
            )
        ]
    if "choices" in output:  # wan2.6 image-generation protocol
        items: list[ResultItem] = []
        for choice in output.get("choices") or []:
            message = choice.get("message") or {}
            for part in message.get("content") or []:
                if part.get("image"):
                    items.append(ResultItem(url=part["image"]))
            if choice.get("code"):
                items.append(ResultItem(code=choice["code"], message=choice.get("message_text")))
        return items
    return [  # old image protocol
        ResultItem(
            url=r.get("url"),
            code=r.get("code"),
            message=r.get("message"),
            orig_prompt=r.get("orig_prompt"),
            actual_prompt=r.get("actual_prompt"),
        )
        for r in output.get("results") or []
    ]


def parse_task(body: dict[str, Any]) -> TaskState:
    """A query response as a `TaskState`. Raises `KeyError`/`TypeError` on a body of the wrong shape."""
    output = body["output"]
    return TaskState(
        task_id=output["task_id"],
        status=str(output["task_status"]),
        results=_results(output),
        code=output.get("code"),
        message=output.get("message"),
        submit_time=output.get("submit_time"),
        scheduled_time=output.get("scheduled_time"),
        end_time=output.get("end_time"),
        usage=body.get("usage") or {},
        request_id=body.get("request_id"),
    )
