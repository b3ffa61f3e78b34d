"""No secret (API key, S3 secret, webhook secret) reaches a log line, an event, a job record or an error,
whatever path it travels: success, refusal, storage failure, webhook delivery, or a careless log call."""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import structlog
from pydantic import SecretStr

from config.logging import configure_logging
from config.settings import load_settings
from tests.conftest import RunningSimulator, S3Server, raw_redis
from tests.stage_runner import enqueue, run
from workers.bucket import ResultBucket, make_minio
from workers.dashscope import DashScopeClient
from workers.errors import StorageError
from workers.jobstore import keys
from workers.runtime import Runtime, make_outbox, make_quota, make_store
from workers.webhook import deliver_pending

API_KEY = "sk-" + secrets.token_hex(20)
WRONG_KEY = "sk-" + secrets.token_hex(20)
WEBHOOK_SECRET = "whsec-" + secrets.token_hex(16)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """genq's logging as a deployment configures it, written to a buffer the test can search."""
    buffer = io.StringIO()
    configure_logging(json_lines=True, stream=buffer)
    yield buffer
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_secrets_never_leave_the_process(
    json_logs: None,
    simulator_factory: Callable[..., RunningSimulator],
    s3_server: S3Server,
    redis_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every path a secret can take, then every captured output is searched for each secret."""
    sim = simulator_factory(keys={API_KEY: "default"})
    wrong_s3_secret = secrets.token_urlsafe(24)
    settings = load_settings(  # the real loading path, which registers the secrets for redaction
        redis_url=redis_url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
        bucket="genq-redact",
        dashscope_api_key=SecretStr(API_KEY),
        dashscope_base_url=sim.base_url,
        result_hosts=(sim.url.removeprefix("http://"),),
        require_https_results=False,
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret=SecretStr(WEBHOOK_SECRET),
        http_timeout_s=5.0,
    )
    api, downloads = httpx.Client(timeout=5), httpx.Client(timeout=5)
    results = ResultBucket(make_minio(settings), settings.bucket)
    results.ensure_bucket()
    store = make_store(settings)
    rt = Runtime(
        settings=settings,
        store=store,
        results=results,
        downloads=downloads,
        dashscope=DashScopeClient(api, base_url=settings.base_url, api_key=API_KEY),
        quota=make_quota(settings),
        outbox=make_outbox(settings),
    )
    errors: list[str] = []

    run(rt, enqueue(rt, {"id": "ok", "prompt": "a cat"}), timeout_s=20)  # success path

    load_settings(s3_secret_key=SecretStr(wrong_s3_secret), dashscope_api_key=SecretStr(WRONG_KEY))
    wrong_s3 = settings.model_copy(update={"s3_secret_key": SecretStr(wrong_s3_secret)})
    try:  # a refused S3 secret
        ResultBucket(make_minio(wrong_s3), "genq-redact").sha256_of("x")
    except StorageError as exc:
        errors.append(str(exc))
        structlog.get_logger("test").error("storage refused", error=exc)

    with httpx.Client(timeout=2) as hook:  # webhook delivery with a signing secret, to a dead endpoint
        deliver_pending(rt, hook, now=time.time())

    refused = DashScopeClient(api, base_url=settings.base_url, api_key=WRONG_KEY)  # a refused API key
    rt_refused = Runtime(
        settings=settings, store=rt.store, results=results, downloads=downloads, dashscope=refused, quota=rt.quota
    )
    run(rt_refused, enqueue(rt_refused, {"id": "bad", "prompt": "a dog"}, batch_id="c"), timeout_s=10)

    # A careless log call that puts secrets in plain sight is still masked.
    structlog.get_logger("test").warning("careless", header=f"Bearer {API_KEY}", cfg={"secret": WEBHOOK_SECRET})
    logging.getLogger("celery.test").warning("stdlib line with %s and %s", API_KEY, wrong_s3_secret)

    captured = capfd.readouterr()
    records = json.dumps(
        [
            raw_redis(rt.settings).hgetall(k)
            for k in raw_redis(rt.settings).scan_iter("genq:*")
            if raw_redis(rt.settings).type(k) == "hash"
        ]
    )
    events = json.dumps(raw_redis(rt.settings).xrange(settings.event_stream))
    dead = json.dumps(raw_redis(rt.settings).xrange(keys.WEBHOOK_DEAD))
    logs = json_logs.getvalue()
    haystacks = {
        "logs": logs,
        "stdout": captured.out,
        "stderr": captured.err,
        "job records": records,
        "events": events,
        "dead letters": dead,
        "errors": "\n".join(errors),
    }
    assert "careless" in logs and "stdlib line with ***" in logs and "InvalidApiKey" in logs  # really captured
    for name, secret in (
        ("API key", API_KEY),
        ("refused API key", WRONG_KEY),
        ("S3 secret", s3_server.secret_key),
        ("wrong S3 secret", wrong_s3_secret),
        ("webhook secret", WEBHOOK_SECRET),
    ):
        for where, text in haystacks.items():
            assert secret not in text, f"{name} found in {where}"
    api.close()
    downloads.close()
