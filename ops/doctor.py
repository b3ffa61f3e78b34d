"""`genq doctor`: check the configured services (and webhook signing) as they are, starting nothing, and say what
is wrong in words.

Each check returns `Finding`s: `ok`, `warn` (works, but not as genq needs for safety) or `fail` (genq cannot
work). The command exits non-zero when any check fails.
"""

from __future__ import annotations

import io
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal, cast
from urllib.parse import urlsplit

import httpx
import redis
from minio.error import MinioException

from config.settings import Settings
from workers.bucket import make_minio
from workers.dashscope import DashScopeClient
from workers.errors import AccountError, RemoteError
from workers.job import Action, Status
from workers.runtime import make_outbox, make_store
from workers.webhook_signing import unsigned_warning

Level = Literal["ok", "warn", "fail"]
MAX_SKEW_S = 2.0


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str


def check_redis(settings: Settings) -> list[Finding]:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=3, decode_responses=True)
    parts = urlsplit(settings.redis_url)  # shown without any password
    where = f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return [
            Finding(
                "redis",
                "fail",
                f"Redis at {where} does not answer ({type(exc).__name__}): start it, or fix GENQ_REDIS_URL.",
            )
        ]
    found = [Finding("redis", "ok", f"Redis at {where} answers.")]
    info = client.info("server")
    numbers = re.match(r"(\d+)\.(\d+)", str(info.get("redis_version", "")))
    version = (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)
    if version < (7, 0):
        # The webhook lane reads the events group's lag and entries-read, and XAUTOCLAIM's deleted entries.
        found.append(
            Finding(
                "redis",
                "fail",
                f"Redis {info.get('redis_version')} is too old: genq needs 7.0 or newer (Valkey 7.2+): XAUTOCLAIM "
                "reporting deleted entries, consumer-group lag and ENTRIESREAD, ZADD GT.",
            )
        )
    try:
        config = cast(dict[str, str], client.config_get("appendonly")) | cast(
            dict[str, str], client.config_get("maxmemory-policy")
        )
    except redis.ResponseError:
        found.append(
            Finding(
                "redis",
                "warn",
                "CONFIG GET is not allowed here, so persistence and eviction cannot "
                "be checked: make sure AOF is on and the policy is noeviction.",
            )
        )
    else:
        if config.get("appendonly") != "yes":
            found.append(
                Finding(
                    "redis",
                    "warn",
                    "Redis persistence (appendonly) is off: queued work is lost if Redis restarts. Set appendonly yes.",
                )
            )
        if config.get("maxmemory-policy") != "noeviction":
            found.append(
                Finding(
                    "redis",
                    "fail",
                    f"maxmemory-policy is {config.get('maxmemory-policy')}: Redis may "
                    "evict jobs when full. Set maxmemory-policy noeviction.",
                )
            )
    seconds, micros = client.time()
    skew = abs(time.time() - (seconds + micros / 1e6))
    found.append(_skew("clock", "Redis", skew))
    return found


def check_s3(settings: Settings) -> list[Finding]:
    if settings.s3_access_key is None or settings.s3_secret_key is None:
        return [
            Finding(
                "s3",
                "warn",
                f"No S3 credentials are set: only the local S3 server genq starts itself on "
                f"{settings.s3_endpoint} can be used.",
            )
        ]
    client = make_minio(settings)
    try:
        if not client.bucket_exists(settings.bucket):
            return [
                Finding(
                    "s3",
                    "fail",
                    f"The bucket {settings.bucket!r} does not exist on {settings.s3_endpoint}: "
                    "create it, or start a genq worker, which creates it.",
                )
            ]
        key = f"_genq-doctor/{uuid.uuid4().hex}"
        payload = secrets.token_bytes(64)
        client.put_object(settings.bucket, key, io.BytesIO(payload), len(payload))
        response = client.get_object(settings.bucket, key)
        try:
            echoed = response.read()
        finally:
            response.close()
            response.release_conn()
        client.remove_object(settings.bucket, key)
    except (MinioException, OSError, ValueError) as exc:
        return [
            Finding(
                "s3", "fail", f"S3 at {settings.s3_endpoint} failed ({_short(exc)}): check the endpoint and the keys."
            )
        ]
    if echoed != payload:
        return [Finding("s3", "fail", "S3 returned other bytes than were written: the server is not working.")]
    return [Finding("s3", "ok", f"Bucket {settings.bucket!r} on {settings.s3_endpoint}: write, read, delete all work.")]


def check_dashscope(settings: Settings, http: httpx.Client) -> list[Finding]:
    """Every key of every account, with a query that creates nothing and costs nothing."""
    if settings.uses_simulator:
        return [Finding("dashscope", "ok", "No DASHSCOPE_API_KEY: genq runs against its local simulator.")]
    found: list[Finding] = []
    started = time.time()
    for account in settings.resolved_accounts():
        if not account.api_keys:
            found.append(Finding("dashscope", "fail", f"Account {account.name} has no API key."))
        for number, key in enumerate(account.api_keys, start=1):
            found.append(_probe_key(http, account.name, number, account.resolved_base_url, key.get_secret_value()))
    if any(f.level == "fail" for f in found):
        return found
    date = _server_date(http, settings.resolved_accounts()[0].resolved_base_url)
    if date is not None:
        found.append(_skew("clock", "DashScope", abs((started + time.time()) / 2 - date)))
    return found


def _probe_key(http: httpx.Client, account: str, number: int, base_url: str, key: str) -> Finding:
    which = f"account {account}, key {number}"
    client = DashScopeClient(http, base_url=base_url, api_key=key)
    try:
        state = client.get_task(f"genq-doctor-{uuid.uuid4()}")
    except AccountError as exc:
        return Finding(
            "dashscope",
            "fail",
            f"DashScope refused the API key at {base_url} ({which}; {exc.code}: {exc.message}). Keys are per "
            "region: check DASHSCOPE_API_KEY (or the account's api_keys) and GENQ_REGION.",
        )
    except RemoteError as exc:
        return Finding("dashscope", "fail", f"DashScope at {base_url} did not answer properly ({which}; {exc.code}).")
    return Finding(
        "dashscope", "ok", f"DashScope at {base_url} accepts the key ({which}; a probe query answered {state.status})."
    )


def check_catalogue(settings: Settings) -> list[Finding]:
    # The settings validated the catalogue whole (each model, the default model, the accounts' limits).
    catalogue = settings.catalogue
    configured = catalogue.configured()
    changed = f"; from your config: {', '.join(configured)}" if configured else ""
    synchronous = sum(1 for name in catalogue if catalogue.spec(name).synchronous)
    return [
        Finding(
            "catalogue",
            "ok",
            f"{len(catalogue)} models ({synchronous} synchronous); default {settings.default_model}{changed}.",
        )
    ]


#: The Standard Webhooks specification asks for a symmetric key of at least this many random bytes.
MIN_WEBHOOK_KEY_BYTES = 24
#: Events due for delivery longer than this mean no webhook worker runs, or the receiver is down.
WEBHOOK_BACKLOG_WARN_S = 300.0


def check_webhook(settings: Settings) -> list[Finding]:
    """Signing (a URL without a secret is said loudly), key strength, and events left waiting for delivery."""
    found: list[Finding] = []
    unsigned = unsigned_warning(settings)
    if unsigned:
        found.append(Finding("webhook", "warn", unsigned))
    elif settings.webhook_url is None:
        found.append(
            Finding("webhook", "ok", "No GENQ_WEBHOOK_URL: events go to webhooks only for batches naming one.")
        )
    else:
        count = len(settings.webhook_keys)
        found.append(Finding("webhook", "ok", f"Webhooks are signed (Standard Webhooks) with {count} key(s)."))
    if any(len(key) < MIN_WEBHOOK_KEY_BYTES for key in settings.webhook_keys):
        found.append(
            Finding(
                "webhook",
                "warn",
                f"A webhook secret is shorter than {MIN_WEBHOOK_KEY_BYTES} bytes: use whsec_ followed by at least "
                f"{MIN_WEBHOOK_KEY_BYTES} random bytes in base64.",
            )
        )
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=3, decode_responses=True)
    outbox = make_outbox(settings, client)
    try:
        oldest, waiting = outbox.oldest_due(), outbox.waiting()
    except (redis.RedisError, OSError):
        return found  # the Redis check says what is wrong
    late_s = time.time() - oldest if oldest is not None else 0.0
    if late_s > WEBHOOK_BACKLOG_WARN_S:
        found.append(
            Finding(
                "webhook",
                "warn",
                f"{waiting} event(s) wait for webhook delivery, the oldest due {late_s / 60:.0f} min ago: is a worker "
                "with --queues webhooks running, and is the receiver up? (docs/events.md)",
            )
        )
    return found


#: A synchronous job handed to the call lane and not taken for this long means no `genq worker --queues call` runs.
CALL_LANE_WAIT_WARN_S = 120.0
#: How many of the jobs due within the hour are looked at for it (enough to find one; a bounded check).
CALL_LANE_SAMPLE = 500


def check_call_lane(settings: Settings) -> list[Finding]:
    """Synchronous jobs handed to the call lane that nobody took: no call-lane worker runs, or it is saturated."""
    store = make_store(settings)
    now = time.time()
    try:
        refs = [ref for ref, _ in store.due(now + 3600, limit=CALL_LANE_SAMPLE)]
    except (redis.RedisError, OSError):
        return []  # the Redis check says what is wrong
    waiting = []
    for ref in refs:
        try:
            job = store.get(ref)
        except (redis.RedisError, OSError, ValueError, TypeError, KeyError):
            continue  # a record this check cannot read says nothing of the lane
        if job is not None and job.next_action is Action.CALL and job.status is Status.SUBMITTING:
            waiting.append(now - job.times.get(Status.SUBMITTING, now))
    late = [w for w in waiting if w > CALL_LANE_WAIT_WARN_S]
    if not late:
        return []
    return [
        Finding(
            "call lane",
            "warn",
            f"{len(late)} synchronous job(s) wait for the call lane, the oldest for {max(late) / 60:.0f} min (since "
            "it entered submitting): is a worker with --queues call running, or are its threads all busy "
            "(GENQ_CALL_LANE_CONCURRENCY; docs/operations.md)?",
        )
    ]


def run_checks(settings: Settings) -> list[Finding]:
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0)) as http:
        return [
            *check_catalogue(settings),
            *check_redis(settings),
            *check_s3(settings),
            *check_dashscope(settings, http),
            *check_webhook(settings),
            *check_call_lane(settings),
        ]


def _skew(check: str, other: str, skew_s: float) -> Finding:
    if skew_s > MAX_SKEW_S:
        return Finding(
            check,
            "warn",
            f"This machine's clock is {skew_s:.1f} s off {other}'s: deadlines, retention "
            "and detection-lag figures will be off. Run NTP.",
        )
    return Finding(check, "ok", f"Clock within {skew_s:.2f} s of {other}.")


def _server_date(http: httpx.Client, base_url: str) -> float | None:
    try:
        header = http.head(base_url).headers.get("date")
        return parsedate_to_datetime(header).timestamp() if header else None
    except (httpx.HTTPError, TypeError, ValueError):
        return None


def _short(exc: Exception) -> str:
    return str(exc).split(";")[0].split("\n")[0][:160] or type(exc).__name__
