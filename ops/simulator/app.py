"""The DashScope simulator's HTTP surface: the `/api/v1` endpoints of the contract, result URLs, admin.

Checks run in the order the service applies them: key (401), async header (403), body and model (400/404),
then the account's limits (429). Faults (`faults.py`) are applied where the real service would fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ops.simulator import media
from ops.simulator.engine import Engine, SimConfig, SimTask
from ops.simulator.faults import FaultPlan, check_triggers
from ops.simulator.models import (
    IMAGE_GENERATION,
    IMAGE_SYNTHESIS,
    MODELS,
    SYNC_GENERATION,
    VIDEO_SYNTHESIS,
    SimModel,
    size_problem,
)
from ops.simulator.responses import (
    UTC8,
    Dropped,
    Settled,
    error,
    list_entry,
    malformed,
    oss_error,
    request_id,
    sync_body,
    task_body,
)

API = "/api/v1"
#: What `POST /_sim/config` may change.
CONFIG_FIELDS = frozenset(
    {"faults", "limits", "concurrency_mode", "burst_protection", "video_bytes", "slow_response_s", "time_scale"}
)


#: The longest negative prompt the service keeps; it truncates the excess (003:129, 440, 899).
NEGATIVE_PROMPT_MAX = 500


@dataclass(frozen=True)
class Creation:
    """A create request that passed the checks: what its task is made from."""

    model: SimModel
    body: dict[str, Any]
    prompt: str
    parameters: dict[str, Any]
    negative_prompt: str | None


class Invalid(Exception):
    """A request the service refuses; carries the answer to send."""

    def __init__(self, response: Response) -> None:
        super().__init__("invalid request")
        self.response = response


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.engine = Engine(config)
        self.signing_key = secrets.token_bytes(32)

    @property
    def faults(self) -> FaultPlan:
        return self.engine.faults

    # --- shared checks --------------------------------------------------------------------------
    def _account(self, request: Request) -> tuple[str, str]:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        account = self.engine.account_of(key)
        if account is None:
            raise Invalid(error(401, "InvalidApiKey", "Invalid API-key provided."))
        return key, account

    async def _parse(self, request: Request, path: str) -> Creation:
        """What a create asks for, or `Invalid` with the service's complaint."""
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
            raise Invalid(error(400, "InvalidParameter", "The request body is not valid JSON.")) from None
        if not isinstance(body, dict):
            raise Invalid(error(400, "InvalidParameter", "The request body must be a JSON object."))
        model = MODELS.get(str(body.get("model", "")))
        if model is None:
            raise Invalid(error(404, "ModelNotFound", f"Model not exist: {body.get('model')!r}."))
        if path not in model.paths:
            raise Invalid(error(400, "InvalidParameter", f"Model {model.name} is not served by this url."))
        body_input, parameters = body.get("input"), body.get("parameters") or {}
        if not isinstance(body_input, dict) or not isinstance(parameters, dict):
            raise Invalid(error(400, "InvalidParameter", "Field required: input"))
        prompt = _messages_prompt(body_input) if path in {IMAGE_GENERATION, SYNC_GENERATION} else _prompt(body_input)
        try:
            check_triggers(prompt)  # a misspelt fault would otherwise never fire, silently
        except ValueError as exc:
            raise Invalid(error(400, "InvalidParameter", str(exc))) from None
        _check_parameters(model, parameters)
        return Creation(model, body, prompt, parameters, _negative_prompt(body_input, parameters))

    def _sign(self, task_id: str, index: int, expires: int) -> str:
        return hmac.new(self.signing_key, f"{task_id}/{index}/{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _result_url(self, request: Request, task: SimTask, index: int) -> str:
        extension = "mp4" if task.model.video else "png"
        config = self.engine.config
        # Born expired: one second before the task's end, so no download, however quick, finds it valid.
        life_s = -1 if self.faults.fires("url_expired", task.prompt) else math.ceil(config.url_life_s * config.scale)
        expires = int(task.end or task.created) + life_s
        base = str(request.base_url).rstrip("/")
        if self.faults.fires("url_unparseable", task.prompt):
            scheme, _, netloc = base.partition("://")
            base = f"{scheme}://evil.example\t@{netloc}"
        return (
            f"{base}/results/{task.task_id}/{index}.{extension}"
            f"?Expires={expires}&OSSAccessKeyId=LTAIsimulator&Signature={self._sign(task.task_id, index, expires)}"
        )

    # --- create ---------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        accepted = await self._new_task(request, request.url.path[len(API) :], async_only=True)
        if isinstance(accepted, Response):
            return accepted
        task, prompt = accepted
        answer = {"request_id": request_id(), "output": {"task_id": task.task_id, "task_status": "PENDING"}}
        return await self._create_faults_after(prompt, answer)

    async def _new_task(self, request: Request, path: str, *, async_only: bool) -> tuple[SimTask, str] | Response:
        """Check the request in the service's order, then create the task; or the answer refusing it."""
        try:
            key, account = self._account(request)
            if async_only and request.headers.get("x-dashscope-async", "").lower() != "enable":
                return error(403, "AccessDenied", "current user api does not support synchronous calls")
            creation = await self._parse(request, path)
        except Invalid as invalid:
            return invalid.response
        prompt = creation.prompt
        if self.faults.fires("create_hang", prompt):  # lost on its way in: no task, and no answer in time
            await asyncio.sleep(4 * self.engine.config.slow_response_s)  # later than any `create_slow` answer
            return error(504, "RequestTimeOut", "The request timed out.")
        task = self._accept(key, account, creation, sync=not async_only)
        return task if isinstance(task, Response) else (task, prompt)

    def _accept(self, key: str, account: str, creation: Creation, *, sync: bool) -> SimTask | Response:
        """A new task, or the refusal a fault or a limit gives instead."""
        model, parameters = creation.model, creation.parameters
        refused = self._create_faults_before(creation.prompt) or self._admit(account, model)
        if refused is not None:
            return refused
        return self.engine.create(
            key=key,
            account=account,
            model=model,
            body=creation.body,
            # The service truncates over-long prompts and negative prompts, it does not refuse them (003:113, 129).
            prompt=creation.prompt[: model.prompt_max],
            negative_prompt=(creation.negative_prompt or "")[:NEGATIVE_PROMPT_MAX],
            n=_n(model, parameters),
            size=str(parameters.get("size", model.default_size)),
            prompt_extend=bool(parameters.get("prompt_extend", True)),
            seed=parameters.get("seed"),
            sync=sync,
            now=self.engine.clock(),
        )

    def _create_faults_before(self, prompt: str) -> Response | None:
        if self.faults.fires("create_inspection", prompt):
            return error(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
        if self.faults.fires("create_ip_infringement", prompt):  # 002:434, 003:1760
            return error(400, "IPInfringementSuspect", "Input data is suspected of being involved in IP infringement.")
        if self.faults.fires("burst", prompt):
            self.engine.counters["throttled_burst"] += 1
            return error(429, "Throttling.BurstRate", "Request rate increased too quickly.")
        if self.faults.fires("create_500", prompt):
            return error(500, "InternalError", "An internal error has occured, please try again later.")
        if self.faults.fires("create_503", prompt):
            return error(
                503,
                "ModelServingError",
                "Too many requests. Your requests are being throttled due to "
                "system capacity limits. Please try again later.",
            )
        if self.faults.fires("create_drop_before", prompt):
            return Dropped()
        return None

    def _admit(self, account: str, model: SimModel) -> Response | None:
        now = self.engine.clock()
        scope = self.engine.scope(account, model)
        code = self.engine.take_submit(scope, now)
        if code is not None:
            self.engine.counters["throttled_burst" if code.endswith("BurstRate") else "throttled_submit"] += 1
            message = (
                "Request rate increased too quickly."
                if code.endswith("BurstRate")
                else "Requests rate limit exceeded, please try again later."
            )
            return error(429, code, message)
        scope.advance(now)
        if self.engine.config.profile.concurrency_mode == "throttle" and scope.unfinished(now) >= scope.concurrency:
            self.engine.counters["throttled_concurrency"] += 1
            return error(429, "Throttling.RateQuota", "Too many tasks at once, please try again later.")
        return None

    async def _create_faults_after(self, prompt: str, answer: dict[str, Any]) -> Response:
        if self.faults.fires("create_drop_after", prompt):
            return Dropped()
        if self.faults.fires("create_malformed", prompt):
            return malformed(answer)
        if self.faults.fires("create_slow", prompt):
            await asyncio.sleep(self.engine.config.slow_response_s)
        return JSONResponse(answer)

    # --- sync generation (no task) --------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        """`multimodal-generation/generation`: waits for the image and answers with it, no task id."""
        accepted = await self._new_task(request, SYNC_GENERATION, async_only=False)
        if isinstance(accepted, Response):
            return accepted
        task, prompt = accepted
        self.engine.counters["sync_calls"] += 1
        self.engine.sync_started(task)
        try:
            answer = await self._sync_answer(request, task, prompt)
        except BaseException:  # the handler itself was cancelled or broke: no answer will be sent
            self.engine.sync_ended(task.task_id)
            raise
        return Settled(answer, lambda: self.engine.sync_ended(task.task_id))

    async def _sync_answer(self, request: Request, task: SimTask, prompt: str) -> Response:
        """Wait for the sync call's task to end (in its slot, like any task), and answer as it ended."""
        scope = self.engine.scope(task.account, task.model)  # the task's own, even if a reset replaces it
        while (status := task.status(self.engine.clock())) in {"PENDING", "RUNNING"}:
            await asyncio.sleep(0.05)
            scope.advance(self.engine.clock())
        if status == "FAILED" and task.failure:
            # The task's failure as the call's error answer (its body as in 003:233-237): 500 for InternalError*,
            # 400 for the caller's (moderation, parameters), as the error codes' statuses are documented.
            return error(500 if task.failure[0].startswith("InternalError") else 400, *task.failure)
        if status != "SUCCEEDED":  # cannot happen (a sync task refuses a cancel), but never answer images for it
            return error(500, "InternalError", f"The task ended {status}.")
        if self.faults.fires("sync_drop", prompt):  # made and billed, but the answer never arrives
            return Dropped()
        urls = [self._result_url(request, task, i) for i in range(task.n) if i not in task.failed_indices]
        return JSONResponse(sync_body(task, urls))

    # --- query, list and cancel -----------------------------------------------------------------
    async def get_task(self, request: Request) -> Response:
        try:
            _, account = self._account(request)
        except Invalid as invalid:
            return invalid.response
        now = self.engine.clock()
        if not self.engine.take_query(account, now, "queries"):
            self.engine.counters["throttled_query"] += 1
            return error(429, "Throttling", "Requests rate limit exceeded, please try again later.")
        self.engine.counters["queries"] += 1
        task_id = request.path_params["task_id"]
        task = self.engine.find(task_id, account, now)
        prompt = self.engine.tasks[task_id].prompt if task_id in self.engine.tasks else ""
        broken = await self._query_faults(prompt)
        if broken is not None:
            return broken
        if task is not None and task.unknown_answers_left > 0:
            task.unknown_answers_left -= 1
            task = None
        if task is None:
            return JSONResponse({"request_id": request_id(), "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        body = task_body(task, now, lambda i: self._result_url(request, task, i))
        if self.faults.fires("query_malformed", prompt):
            return malformed(body)
        return JSONResponse(body)

    async def _query_faults(self, prompt: str) -> Response | None:
        if self.faults.fires("query_429", prompt):
            self.engine.counters["throttled_query"] += 1
            return error(429, "Throttling", "Requests rate limit exceeded, please try again later.")
        if self.faults.fires("query_500", prompt):
            return error(500, "InternalError", "An internal error has occured, please try again later.")
        if self.faults.fires("query_503", prompt):
            return error(503, "ModelServingError", "The model is temporarily unavailable.")
        if self.faults.fires("query_drop", prompt):
            return Dropped()
        if self.faults.fires("query_slow", prompt):
            await asyncio.sleep(self.engine.config.slow_response_s)
        return None

    async def list_tasks(self, request: Request) -> Response:
        """`GET /tasks`: the account's tasks in a time window (default the last 24 h), newest first, paged."""
        try:
            _, account = self._account(request)
            params = request.query_params
            now = self.engine.clock()
            start = _list_time(params.get("start_time"), now - 24 * 3600)
            end = _list_time(params.get("end_time"), now)
            page_no, page_size = int(params.get("page_no", "1")), int(params.get("page_size", "10"))
            if page_no < 1 or not 1 <= page_size <= 100:
                raise ValueError("page_no must be >= 1 and page_size 1-100")
        except Invalid as invalid:
            return invalid.response
        except ValueError as exc:
            return error(400, "InvalidParameter", str(exc))
        if not self.engine.take_query(account, now, "lists"):
            self.engine.counters["throttled_query"] += 1
            return error(429, "Throttling", "Requests rate limit exceeded, please try again later.")
        if self.faults.fires("list_500", ""):
            return error(500, "InternalError", "An internal error has occured, please try again later.")
        self.engine.counters["lists"] += 1
        found = self.engine.list(
            account, start=start, end=end, model=params.get("model_name"), status=params.get("status"), now=now
        )
        page = found[(page_no - 1) * page_size : page_no * page_size]
        return JSONResponse(
            {
                "request_id": request_id(),
                "data": [list_entry(t, now) for t in page],
                "page_no": page_no,
                "page_size": page_size,
                "total": len(found),
                "total_page": max(1, math.ceil(len(found) / page_size)),
            }
        )

    async def cancel(self, request: Request) -> Response:
        try:
            _, account = self._account(request)
        except Invalid as invalid:
            return invalid.response
        now = self.engine.clock()
        task = self.engine.find(request.path_params["task_id"], account, now)
        if task is None:
            return error(404, "InvalidParameter", "The task does not exist.")
        if self.faults.fires("cancel_429", task.prompt):
            self.engine.counters["throttled_cancel"] += 1
            return error(429, "Throttling", "Requests throttling triggered.")
        if self.faults.fires("cancel_503", task.prompt):
            return error(503, "ModelServingError", "The model is overloaded, please try again later.")
        if self.faults.fires("cancel_refused", task.prompt):  # as if it had started between query and cancel
            return error(400, "UnsupportedOperation", "Failed to cancel the task, please confirm the task status.")
        if task.sync:  # [inferred] a sync call's client is waiting for it: it runs to its answer
            return error(400, "UnsupportedOperation", "Failed to cancel the task: it is a synchronous call.")
        if not self.engine.cancel(task, now):
            return error(
                400,
                "UnsupportedOperation",
                f"Failed to cancel the task, please confirm the task status is PENDING (it is {task.status(now)}).",
            )
        # The pages print `rsp.output.task_status` after a successful cancel (002:183-186, 003:1453-1457).
        return JSONResponse(
            {"request_id": request_id(), "output": {"task_id": task.task_id, "task_status": "CANCELED"}}
        )

    # --- result URLs ----------------------------------------------------------------------------
    async def result(self, request: Request) -> Response:
        task_id, name = request.path_params["task_id"], request.path_params["name"]
        query = request.query_params
        task = self.engine.tasks.get(task_id)
        try:
            index, expires = int(name.partition(".")[0]), int(query.get("Expires", "0"))
        except ValueError:
            index, expires = -1, 0
        if (
            task is None
            or not 0 <= index < task.n
            or not hmac.compare_digest(self._sign(task_id, index, expires), query.get("Signature", ""))
        ):
            return oss_error("SignatureDoesNotMatch", "The request signature we calculated does not match.")
        if self.engine.clock() > expires:
            return oss_error("AccessDenied", "Request has expired.")
        url_key = f"{task_id}/{index}"
        first = url_key not in self.engine.downloaded_urls
        self.engine.downloaded_urls.add(url_key)
        if first and self.faults.fires("url_fail_once", task.prompt):
            return oss_error("ServiceUnavailable", "Please reduce your request rate.", status=503)
        if self.faults.fires("url_wrong_bytes", task.prompt):
            # A proxy's page where the image should be: 200, declared an image, not one.
            return Response(b"<html><body>Access blocked by policy</body></html>", media_type="image/png")
        self.engine.counters["downloads"] += 1
        if task.model.video:
            size = media.mp4_size(self.engine.config.video_bytes)
            return StreamingResponse(
                self._recorded(url_key, media.mp4_chunks(url_key, self.engine.config.video_bytes)),
                media_type="video/mp4",
                headers={"Content-Length": str(size)},
            )
        width, height = (int(x) for x in task.size.split("*"))
        body = await run_in_threadpool(media.png, width, height, url_key)
        self.engine.served_sha256[url_key] = hashlib.sha256(body).hexdigest()
        return Response(body, media_type="image/png")

    def _recorded(self, url_key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Stream `chunks`, and record their sha256 once the last one is sent (a dropped download records none)."""
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
            yield chunk
        self.engine.served_sha256[url_key] = digest.hexdigest()

    # --- admin (outside /api/v1) ----------------------------------------------------------------
    async def counters(self, request: Request) -> Response:
        return JSONResponse(self.engine.snapshot(self.engine.clock()))

    async def tasks(self, request: Request) -> Response:
        """`GET /_sim/tasks`: every task with its true outcome and the sha256 of each result served."""
        return JSONResponse({"tasks": self.engine.task_report(self.engine.clock())})

    async def reset(self, request: Request) -> Response:
        self.engine.reset()
        return JSONResponse({"reset": True})

    async def configure(self, request: Request) -> Response:
        """`POST /_sim/config` with any of `faults`, `limits`, `concurrency_mode`, `burst_protection`,
        `video_bytes`, `slow_response_s`, `time_scale`; anything else, or a value it cannot use, is a 400 that
        names it (and nothing is changed)."""
        try:
            data = json.loads(await request.body())
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            unknown = set(data) - CONFIG_FIELDS
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}; known: {', '.join(sorted(CONFIG_FIELDS))}")
            config = self.engine.config
            video_bytes = int(_usable("video_bytes", data.get("video_bytes", config.video_bytes)))
            slow_response_s = _usable("slow_response_s", data.get("slow_response_s", config.slow_response_s))
            time_scale = _usable("time_scale", data["time_scale"]) if "time_scale" in data else config.time_scale
            self.engine.configure(
                faults=data.get("faults"),
                limits=data.get("limits"),
                concurrency_mode=data.get("concurrency_mode"),
                burst_protection=data.get("burst_protection"),
            )
        except (ValueError, TypeError, RecursionError) as exc:
            return error(400, "InvalidParameter", str(exc))
        config.video_bytes, config.slow_response_s, config.time_scale = video_bytes, slow_response_s, time_scale
        return JSONResponse({"profile": config.profile.name, "faults": self.engine.faults.probabilities})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "profile": self.engine.config.profile.name})


def _usable(name: str, value: Any) -> float:
    """`value` as a finite number >= 0; `ValueError` naming the setting otherwise (an infinite or NaN time scale
    would break every duration and URL expiry computed from it)."""
    try:
        number = float(value)
    except OverflowError:  # an integer past any float
        number = math.inf
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _prompt(body_input: dict[str, Any]) -> str:
    prompt = body_input.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid(error(400, "InvalidParameter", "Field required: input.prompt"))
    return prompt


def _messages_prompt(body_input: dict[str, Any]) -> str:
    messages = body_input.get("messages")
    if (
        not isinstance(messages, list)
        or len(messages) != 1
        or not isinstance(messages[0], dict)
        or messages[0].get("role") != "user"
        or not isinstance(messages[0].get("content"), list)
    ):
        raise Invalid(error(400, "InvalidParameter", "input.messages must hold exactly one user message."))
    texts = [c.get("text") for c in messages[0]["content"] if isinstance(c, dict) and "text" in c]
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
        raise Invalid(error(400, "InvalidParameter", "input.messages[0].content must hold exactly one text."))
    return texts[0]


def _check_parameters(model: SimModel, parameters: dict[str, Any]) -> None:
    n = parameters.get("n", model.default_n)
    if not model.video and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4):
        raise Invalid(error(400, "InvalidParameter", "The parameter n must be an integer in [1, 4]."))
    problem = size_problem(model, str(parameters.get("size", model.default_size)))
    if problem:
        raise Invalid(error(400, "InvalidParameter", problem))
    seed = parameters.get("seed")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 2147483647):
        raise Invalid(error(400, "InvalidParameter", "The parameter seed must be an integer in [0, 2147483647]."))
    duration = parameters.get("duration")
    if model.video and duration is not None and duration not in model.durations:
        raise Invalid(error(400, "InvalidParameter", f"The parameter duration must be one of {model.durations}."))


def _negative_prompt(body_input: dict[str, Any], parameters: dict[str, Any]) -> str | None:
    """The negative prompt as sent: the old protocol's `input.negative_prompt`, else the new protocol's
    `parameters.negative_prompt` (None when neither is given); `Invalid` when one is not a string."""
    found = {"input": body_input.get("negative_prompt"), "parameters": parameters.get("negative_prompt")}
    for where, value in found.items():
        if value is not None and not isinstance(value, str):
            raise Invalid(error(400, "InvalidParameter", f"{where}.negative_prompt must be a string."))
    return found["input"] if found["input"] is not None else found["parameters"]


def _n(model: SimModel, parameters: dict[str, Any]) -> int:
    return 1 if model.video else int(parameters.get("n", model.default_n))  # Wan's default is 4, Qwen's 1


def _list_time(value: str | None, default: float) -> float:
    """`YYYYMMDDhhmmss` in UTC+8 -> epoch seconds."""
    if not value:
        return default
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=UTC8).timestamp()
    except ValueError:
        raise ValueError(f"time {value!r} must be YYYYMMDDhhmmss") from None


def create_app(config: SimConfig) -> Starlette:
    sim = Simulator(config)
    routes = [
        *(
            Route(API + path, sim.create, methods=["POST"])
            for path in (IMAGE_SYNTHESIS, IMAGE_GENERATION, VIDEO_SYNTHESIS)
        ),
        Route(API + SYNC_GENERATION, sim.generate, methods=["POST"]),
        Route(API + "/tasks", sim.list_tasks, methods=["GET"]),
        Route(API + "/tasks/{task_id}", sim.get_task, methods=["GET"]),
        Route(API + "/tasks/{task_id}/cancel", sim.cancel, methods=["POST"]),
        Route("/results/{task_id}/{name}", sim.result, methods=["GET"]),
        Route("/_sim/counters", sim.counters, methods=["GET"]),
        Route("/_sim/tasks", sim.tasks, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
        Route("/_sim/config", sim.configure, methods=["POST"]),
        Route("/_sim/health", sim.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app
