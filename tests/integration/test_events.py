"""Events: every event genq emits validates against docs/events.schema.json; the webhook sink delivers them
signed, retries failures and dead-letters what never gets through (the lane's own acceptance tests:
test_webhook_lane.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from ops.localstack.process import free_port
from producer.cli import app
from producer.stream import RequestConsumer
from tests.conftest import SIM_KEY, RunningSimulator, raw_redis
from tests.stage_runner import enqueue, run
from workers.dashscope import DashScopeClient
from workers.job import Next
from workers.jobstore import keys
from workers.runtime import Runtime, make_inbox
from workers.sweep import resend_overdue
from workers.webhook import DeliveryReport, deliver_pending

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "events.schema.json").read_text())


def stream_events(rt: Runtime) -> list[dict[str, Any]]:
    return [json.loads(f["event"]) for _, f in raw_redis(rt.settings).xrange(rt.settings.event_stream)]


def test_every_event_kind_validates_against_the_schema(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """Succeeded, partial, failed, expired, batch finished, account paused, result-at-risk and request-rejected
    events all validate; the schema is strict enough to refuse a broken one."""
    rt = runtime_factory(unknown_confirm_s=1.0)
    prompts = ["ok", "p sim:task_partial", "x sim:task_inspection", "y sim:task_expire"]
    run(rt, enqueue(rt, *({"id": f"j{i}", "prompt": p, "n": "2"} for i, p in enumerate(prompts))), timeout_s=30)
    assert simulator.faults_fired() == {"task_partial": 1, "task_inspection": 1, "task_expire": 1}

    no_s3 = runtime_factory(ensure_bucket=False, s3_endpoint=f"127.0.0.1:{free_port()}")  # nothing listens there
    run(
        no_s3,
        enqueue(no_s3, {"id": "r", "prompt": "a"}, batch_id="risk"),
        timeout_s=40,
        until=lambda: any(e["type"] == "genq.result.at_risk" for e in stream_events(rt)),
    )

    revoked = runtime_factory()
    revoked.dashscope = DashScopeClient(revoked.downloads, base_url=revoked.settings.base_url, api_key="revoked")
    run(revoked, enqueue(revoked, {"id": "k", "prompt": "a"}, batch_id="acct"), timeout_s=10)

    requests = RequestConsumer(
        rt.store, rt.settings, rt.send, inbox=make_inbox(rt.settings), quota=rt.quota, consumer="t", block_ms=100
    )
    requests.ensure_group()
    raw_redis(rt.settings).xadd(
        rt.settings.request_stream, {"request": json.dumps({"request_id": "q", "prompt": "a", "n": 9})}
    )
    assert requests.step().rejected == 1

    events = stream_events(rt)
    kinds = {e["type"] for e in events}
    assert kinds >= {
        "genq.job.succeeded",
        "genq.job.partially_succeeded",
        "genq.job.failed",
        "genq.job.expired",
        "genq.batch.finished",
        "genq.account.paused",
        "genq.result.at_risk",
        "genq.request.rejected",
    }
    for event in events:
        jsonschema.validate(event, SCHEMA)
    broken = {**events[0], "data": {"ref": "no-slash"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers with the statuses it is given, and records each request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/hook", self.hook, methods=["POST"])]),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
            )
        )

    async def hook(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        return Response(status_code=self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[list[int]], Receiver]]:
    started: list[tuple[Receiver, threading.Thread]] = []

    def start(statuses: list[int]) -> Receiver:
        receiver = Receiver(statuses)
        thread = threading.Thread(target=receiver.server.run, daemon=True)
        thread.start()
        while not receiver.server.started:
            time.sleep(0.02)
        started.append((receiver, thread))
        return receiver

    yield start
    for receiver, thread in started:
        receiver.server.should_exit = True
        thread.join(5)


def test_webhook_delivers_signed_events_and_retries_failures(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[list[int]], Receiver]
) -> None:
    """A first 500 is retried once its backoff has passed; the delivered body is the CloudEvent, signed both per
    Standard Webhooks (HMAC-SHA256 of '<webhook-id>.<timestamp>.<body>', base64) and with the deprecated
    X-Genq-Signature (hex HMAC-SHA256 of '<timestamp>.<body>'); the secret itself is never sent."""
    hook = receiver_factory([500, 200])
    rt = runtime_factory(webhook_url=hook.url, webhook_secret=SecretStr("hook-secret-123"))
    run(rt, enqueue(rt, {"id": "j", "prompt": "a cat"}), timeout_s=20)
    t0 = time.time()
    with httpx.Client() as http:
        first = deliver_pending(rt, http, now=t0)
        # The first try at the URL failed, so the round's other event was not sent and counts the same failure.
        assert (first.failed, first.delivered, len(hook.requests)) == (2, 0, 1)
        early = deliver_pending(rt, http, now=t0 + 1)  # before the first retry's delay (5 s, up to 20 % more)
        assert early == DeliveryReport() and len(hook.requests) == 1
        second = deliver_pending(rt, http, now=t0 + 10)
    assert (second.delivered, second.failed, len(hook.requests)) == (2, 0, 3)
    headers, body = hook.requests[-1]
    # The documented schemes, computed here rather than with genq's own functions.
    expected = hmac.new(b"hook-secret-123", headers["x-genq-timestamp"].encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["x-genq-signature"], "sha256=" + expected.hexdigest())
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    standard = base64.b64encode(hmac.new(b"hook-secret-123", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == "v1," + standard
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert all(b"hook-secret-123" not in b and "hook-secret-123" not in str(h) for h, b in hook.requests)
    assert {json.loads(b)["type"] for _, b in hook.requests} == {"genq.job.succeeded", "genq.batch.finished"}


def test_webhook_dead_letters_after_the_last_attempt(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[list[int]], Receiver]
) -> None:
    """An endpoint that always fails is tried once per round (its other events are not sent that round) until
    webhook_max_attempts tries; then every event is dead-lettered with its error and reason."""
    hook = receiver_factory([503])
    rt = runtime_factory(webhook_url=hook.url, webhook_max_attempts=3)
    run(rt, enqueue(rt, {"id": "j", "prompt": "a cat"}), timeout_s=20)
    t0 = time.time()
    with httpx.Client() as http:
        reports = [deliver_pending(rt, http, now=t0 + 3600 * i) for i in range(4)]
    assert [r.dead for r in reports] == [0, 0, 2, 0] and len(hook.requests) == 3
    dead = raw_redis(rt.settings).xrange(keys.WEBHOOK_DEAD)
    assert len(dead) == 2 and dead[0][1]["error"] == "HTTP 503" and dead[0][1]["attempts"] == "3"
    assert dead[0][1]["reason"].startswith("gave up after 3 tries")
    assert {json.loads(f["event"])["type"] for _, f in dead} == {"genq.job.succeeded", "genq.batch.finished"}
    pending = raw_redis(rt.settings).xpending(rt.settings.event_stream, keys.WEBHOOK_GROUP)
    assert pending["pending"] == 0 and raw_redis(rt.settings).zcard(keys.WEBHOOK_DUE) == 0


def test_a_batch_webhook_overrides_the_global_one(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[list[int]], Receiver], tmp_path: Path
) -> None:
    """Events of a batch sent by `genq batch --webhook URL` go to that URL; other batches' go to the global one."""
    global_hook, batch_hook = receiver_factory([200]), receiver_factory([200])
    rt = runtime_factory(webhook_url=global_hook.url, sweep_grace_s=0.0)
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("id,prompt\nj,a\n")
    s = rt.settings
    env = {
        "DASHSCOPE_API_KEY": SIM_KEY,
        "GENQ_DASHSCOPE_BASE_URL": s.base_url,
        "GENQ_REDIS_URL": s.redis_url,
        "GENQ_S3_ENDPOINT": s.s3_endpoint,
        "GENQ_S3_ACCESS_KEY": s.s3_access_key.get_secret_value() if s.s3_access_key else "",
        "GENQ_S3_SECRET_KEY": s.s3_secret_key.get_secret_value() if s.s3_secret_key else "",
        "GENQ_BUCKET": s.bucket,
        "GENQ_STATE_DIR": str(s.state_dir),
    }
    sent = CliRunner().invoke(
        app, ["batch", str(csv_file), "--webhook", batch_hook.url, "--no-wait"], env=env, terminal_width=200
    )
    assert sent.exit_code == 0, sent.output
    # The CLI handed its job to Celery, which no worker reads here: the sweep re-sends it to this test instead.
    mine: list[Next] = []
    assert resend_overdue(rt, lambda step: mine.append(step) if step else None) == 1
    run(rt, mine + enqueue(rt, {"id": "j", "prompt": "b"}), timeout_s=20)
    with httpx.Client() as http:
        deliver_pending(rt, http, now=time.time())
    assert {json.loads(b)["subject"] for _, b in batch_hook.requests} == {"mine/j", "mine"}
    assert {json.loads(b)["subject"] for _, b in global_hook.requests} == {"b/j", "b"}
