"""The DashScope simulator's HTTP surface: the `/api/v1` endpoints of the contract, result URLs, admin.

Checks run in the order the service applies them: key (401), async header (403), body and model (400/404),
then the account's limits (429). Answers are shaped field for field like the seed pages' examples.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ops.simulator import media
from ops.simulator.engine import Engine, SimConfig, SimTask
from ops.simulator.models import IMAGE_GENERATION, IMAGE_SYNTHESIS, MODELS, VIDEO_SYNTHESIS, size_problem

UTC8 = timezone(timedelta(hours=8))
API = "/api/v1"


def stamp(ts: float) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` in UTC+8, as the service writes its times."""
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _request_id() -> str:
    return str(uuid.uuid4())


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"request_id": _request_id(), "code": code, "message": message}, status_code=status)


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.engine = Engine(config)
        self.signing_key = secrets.token_bytes(32)

    # --- helpers --------------------------------------------------------------------------------
    def _account(self, request: Request) -> tuple[str, str] | JSONResponse:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        account = self.engine.account_of(key)
        if account is None:
            return error(401, "InvalidApiKey", "Invalid API-key provided.")
        return key, account

    def _sign(self, task_id: str, index: int, expires: int) -> str:
        message = f"{task_id}/{index}/{expires}".encode()
        return hmac.new(self.signing_key, message, hashlib.sha256).hexdigest()[:32]

    def _result_url(self, request: Request, task: SimTask, index: int) -> str:
        extension = "mp4" if task.model.video else "png"
        expires = int(task.end or task.created) + int(self.engine.config.url_life_s * self.engine.config.time_scale)
        base = str(request.base_url).rstrip("/")
        signature = self._sign(task.task_id, index, expires)
        return (
            f"{base}/results/{task.task_id}/{index}.{extension}"
            f"?Expires={expires}&OSSAccessKeyId=LTAIsimulator&Signature={signature}"
        )

    # --- create ---------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        who = self._account(request)
        if isinstance(who, JSONResponse):
            return who
        key, account = who
        if request.headers.get("x-dashscope-async", "").lower() != "enable":
            return error(403, "AccessDenied", "current user api does not support synchronous calls")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "InvalidParameter", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return error(400, "InvalidParameter", "The request body must be a JSON object.")
        model = MODELS.get(str(body.get("model", "")))
        if model is None:
            return error(404, "ModelNotFound", f"Model not exist: {body.get('model')!r}.")
        if model.path != request.url.path[len(API) :]:
            return error(400, "InvalidParameter", f"Model {model.name} is not served by this url.")
        parsed = self._parse_create(model.path, body)
        if isinstance(parsed, JSONResponse):
            return parsed
        prompt, parameters = parsed
        n = parameters.get("n", 4)  # the service's default is 4: clients must send n
        if model.video:
            n = 1
        elif not isinstance(n, int) or not 1 <= n <= 4:
            return error(400, "InvalidParameter", "The parameter n must be an integer in [1, 4].")
        size = str(parameters.get("size", model.default_size))
        problem = size_problem(model, size)
        if problem:
            return error(400, "InvalidParameter", problem)
        seed = parameters.get("seed")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 2147483647):
            return error(400, "InvalidParameter", "The parameter seed must be an integer in [0, 2147483647].")

        now = time.time()
        scope = self.engine.scope(account, model)
        if not self.engine.take_submit(scope, now):
            self.engine.counters["throttled_submit"] += 1
            return error(429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.")
        scope.advance(now)
        if self.engine.config.concurrency_mode == "throttle" and scope.unfinished(now) >= scope.concurrency:
            self.engine.counters["throttled_concurrency"] += 1
            return error(429, "Throttling.RateQuota", "Too many tasks at once, please try again later.")
        # Over-long prompts are truncated by the service, not refused.
        prompt = prompt[: model.prompt_max]
        task = self.engine.create(
            key=key,
            account=account,
            model=model,
            body=body,
            prompt=prompt,
            n=n,
            size=size,
            prompt_extend=bool(parameters.get("prompt_extend", True)),
            now=now,
        )
        return JSONResponse(
            {"request_id": _request_id(), "output": {"task_id": task.task_id, "task_status": "PENDING"}}
        )

    @staticmethod
    def _parse_create(path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | JSONResponse:
        body_input = body.get("input")
        parameters = body.get("parameters") or {}
        if not isinstance(body_input, dict) or not isinstance(parameters, dict):
            return error(400, "InvalidParameter", "Field required: input")
        if path == IMAGE_GENERATION:
            messages = body_input.get("messages")
            if (
                not isinstance(messages, list)
                or len(messages) != 1
                or messages[0].get("role") != "user"
                or not isinstance(messages[0].get("content"), list)
            ):
                return error(400, "InvalidParameter", "input.messages must hold exactly one user message.")
            texts = [c.get("text") for c in messages[0]["content"] if isinstance(c, dict) and "text" in c]
            if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
                return error(400, "InvalidParameter", "input.messages[0].content must hold exactly one text.")
            return texts[0], parameters
        prompt = body_input.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return error(400, "InvalidParameter", "Field required: input.prompt")
        negative = body_input.get("negative_prompt", "")
        if isinstance(negative, str) and len(negative) > 500:
            return error(400, "InvalidParameter", "input.negative_prompt must be at most 500 characters.")
        return prompt, parameters

    # --- query and cancel -----------------------------------------------------------------------
    async def get_task(self, request: Request) -> Response:
        who = self._account(request)
        if isinstance(who, JSONResponse):
            return who
        _, account = who
        now = time.time()
        if not self.engine.take_query(account, now):
            self.engine.counters["throttled_query"] += 1
            return error(429, "Throttling", "Requests rate limit exceeded, please try again later.")
        self.engine.counters["queries"] += 1
        task_id = request.path_params["task_id"]
        task = self.engine.find(task_id, account, now)
        if task is None:
            return JSONResponse({"request_id": _request_id(), "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        return JSONResponse(self._task_body(request, task, now))

    def _task_body(self, request: Request, task: SimTask, now: float) -> dict[str, Any]:
        status = task.status(now)
        output: dict[str, Any] = {"task_id": task.task_id, "task_status": status, "submit_time": stamp(task.created)}
        if task.scheduled is not None and task.scheduled <= now:
            output["scheduled_time"] = stamp(task.scheduled)
        if status in {"SUCCEEDED", "CANCELED"}:
            output["end_time"] = stamp(task.end if status == "SUCCEEDED" and task.end else task.canceled_at or now)
        body: dict[str, Any] = {"request_id": _request_id(), "output": output}
        if status != "SUCCEEDED":
            return body
        urls = [self._result_url(request, task, i) for i in range(task.n)]
        if task.model.video:
            output.update(video_url=urls[0], orig_prompt=task.prompt, actual_prompt=task.actual_prompt or task.prompt)
            duration = (task.body.get("parameters") or {}).get("duration", 5)
            body["usage"] = {"video_count": 1, "video_duration": duration, "video_ratio": task.size}
        elif task.model.path == IMAGE_GENERATION:
            output["finished"] = True
            output["choices"] = [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": url, "type": "image"} for url in urls]},
                }
            ]
            body["usage"] = {
                "size": task.size,
                "total_tokens": 0,
                "image_count": task.n,
                "output_tokens": 0,
                "input_tokens": 0,
            }
        else:
            results = []
            for url in urls:
                item = {"url": url, "orig_prompt": task.prompt}
                if task.actual_prompt:
                    item["actual_prompt"] = task.actual_prompt
                results.append(item)
            output["results"] = results
            output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": task.n, "FAILED": 0}
            body["usage"] = {"image_count": task.n}
        return body

    async def cancel(self, request: Request) -> Response:
        who = self._account(request)
        if isinstance(who, JSONResponse):
            return who
        _, account = who
        now = time.time()
        task = self.engine.find(request.path_params["task_id"], account, now)
        if task is None:
            return error(404, "InvalidParameter", "The task does not exist.")
        if not self.engine.cancel(task, now):
            return error(
                400,
                "UnsupportedOperation",
                f"Failed to cancel the task, please confirm the task status is PENDING (it is {task.status(now)}).",
            )
        return JSONResponse({"request_id": _request_id()})

    # --- result URLs ----------------------------------------------------------------------------
    async def result(self, request: Request) -> Response:
        task_id, name = request.path_params["task_id"], request.path_params["name"]
        index_text, _, _ = name.partition(".")
        query = request.query_params
        task = self.engine.tasks.get(task_id)
        try:
            index, expires = int(index_text), int(query.get("Expires", "0"))
        except ValueError:
            index, expires = -1, 0
        valid = (
            task is not None
            and 0 <= index < task.n
            and hmac.compare_digest(self._sign(task_id, index, expires), query.get("Signature", ""))
        )
        if not valid or task is None:
            return self._oss_error("SignatureDoesNotMatch", "The request signature we calculated does not match.")
        if time.time() > expires:
            return self._oss_error("AccessDenied", "Request has expired.")
        self.engine.counters["downloads"] += 1
        if task.model.video:
            data = await run_in_threadpool(media.mp4, f"{task_id}/{index}")
            return Response(data, media_type="video/mp4")
        width, height = (int(x) for x in task.size.split("*"))
        data = await run_in_threadpool(media.png, width, height, f"{task_id}/{index}")
        return Response(data, media_type="image/png")

    @staticmethod
    def _oss_error(code: str, message: str) -> Response:
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n  <Message>{message}'
            f"</Message>\n  <RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId>\n"
            "  <HostId>dashscope-result-sim.oss-cn-sim.aliyuncs.com</HostId>\n</Error>\n"
        )
        return Response(xml, status_code=403, media_type="application/xml")

    # --- admin (outside /api/v1) ----------------------------------------------------------------
    async def counters(self, request: Request) -> Response:
        return JSONResponse(self.engine.snapshot(time.time()))

    async def reset(self, request: Request) -> Response:
        self.engine.reset()
        return JSONResponse({"reset": True})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "profile": self.engine.config.profile})


def create_app(config: SimConfig) -> Starlette:
    sim = Simulator(config)
    routes = [
        *(
            Route(API + path, sim.create, methods=["POST"])
            for path in (IMAGE_SYNTHESIS, IMAGE_GENERATION, VIDEO_SYNTHESIS)
        ),
        Route(API + "/tasks/{task_id}", sim.get_task, methods=["GET"]),
        Route(API + "/tasks/{task_id}/cancel", sim.cancel, methods=["POST"]),
        Route("/results/{task_id}/{name}", sim.result, methods=["GET"]),
        Route("/_sim/counters", sim.counters, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
        Route("/_sim/health", sim.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app
