"""What a worker process stands on, built once per process from the settings (after the fork, lazily)."""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import redis
import structlog

from config.celery_app import process_settings
from config.settings import Settings
from workers.bucket import Bucket, ResultBucket, make_minio
from workers.dashscope import DashScopeClient
from workers.job import Next
from workers.jobstore import JobStore, RedisJobStore
from workers.jobstore.request_inbox import RequestInbox
from workers.jobstore.webhook_outbox import Outbox
from workers.quota.durations import Durations, MemoryDurations, RedisDurations
from workers.quota.quota import Quota
from workers.quota.watch_board import MemoryWatchBoard, RedisWatchBoard, WatchBoard

log = structlog.get_logger("genq.runtime")


def _unsent(step: Next | None) -> None:
    if step is not None:
        log.warning("no sender in this runtime; the recovery sweep will send it", ref=step.ref, action=step.action)


def _no_watcher(account: str, token: str) -> None:
    """Where no Celery app runs (tests of one stage): no watcher starts, and polls keep their own schedule."""


@dataclass
class Runtime:
    """What the stages use. `dashscope` is the first account's client; `clients` holds every account's, one
    per API key, taken in turn so that an account's creates spread over its keys. `send` publishes the
    messages of *other* jobs a stage sets going (admissions into a slot it freed); `start_watch` sends the first
    message of an account's task-list watcher (`workers/watch.py`)."""

    settings: Settings
    store: JobStore
    dashscope: DashScopeClient
    results: Bucket
    downloads: httpx.Client
    quota: Quota
    clients: dict[str, list[DashScopeClient]] = field(default_factory=dict)
    outbox: Outbox | None = None  # the webhook outbox (Redis only); None where no webhook lane runs
    send: Callable[[Next | None], None] = _unsent
    durations: Durations = field(default_factory=MemoryDurations)
    watch_board: WatchBoard = field(default_factory=MemoryWatchBoard)
    start_watch: Callable[[str, str], None] = _no_watcher
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)  # what `close` lets go of
    _turns: dict[str, Iterator[DashScopeClient]] = field(default_factory=dict, init=False, repr=False)

    def close(self) -> None:
        """Let go of the connections this runtime opened (a worker's live as long as its process; an
        embedding's, such as the Python API's, end with it)."""
        while self.closers:
            self.closers.pop()()

    def client(self, account: str | None) -> DashScopeClient:
        """The next client (API key) of `account`; the first account's when it has none of its own."""
        if account is None or account not in self.clients:
            return self.dashscope
        turn = self._turns.get(account)
        if turn is None:
            turn = self._turns[account] = itertools.cycle(self.clients[account])
        return next(turn)


def make_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def make_store(settings: Settings, client: redis.Redis | None = None) -> RedisJobStore:
    return RedisJobStore(
        client or make_redis(settings),
        event_stream=settings.event_stream,
        event_stream_maxlen=settings.event_stream_maxlen,
    )


def make_quota(settings: Settings, client: redis.Redis | None = None) -> Quota:
    """The fleet's quota, in the configured Redis."""
    return Quota.redis(client or make_redis(settings))


def make_outbox(settings: Settings, client: redis.Redis | None = None) -> Outbox:
    return Outbox(client or make_redis(settings), settings)


def make_inbox(settings: Settings, client: redis.Redis | None = None) -> RequestInbox:
    """The request stream of upstream stages, as `genq consume` reads it."""
    return RequestInbox(
        client or make_redis(settings),
        stream=settings.request_stream,
        group=settings.request_group,
        event_stream=settings.event_stream,
        event_stream_maxlen=settings.event_stream_maxlen,
    )


def account_clients(settings: Settings, http: httpx.Client) -> dict[str, list[DashScopeClient]]:
    """One client per API key of every account; an account without keys is a configuration error."""
    clients: dict[str, list[DashScopeClient]] = {}
    for account in settings.resolved_accounts():
        if not account.api_keys:
            raise RuntimeError(
                f"account {account.name} has no API key (set DASHSCOPE_API_KEY, or api_keys in its config; "
                "the local stack sets the simulator's key)"
            )
        clients[account.name] = [
            DashScopeClient(
                http,
                base_url=account.resolved_base_url,
                api_key=key.get_secret_value(),
                workspace=account.workspace,
            )
            for key in account.api_keys
        ]
    return clients


#: Connections to the service a process keeps for its creates, queries and lists (a call-lane worker: besides one
#: per synchronous call).
API_CONNECTIONS = 20
#: Seconds to open a connection to the service; `http_timeout_s` then bounds each read and write.
CONNECT_TIMEOUT_S = 5.0


def answer_bound_s(settings: Settings) -> float:
    """How long after sending a request genq may still receive its answer: connecting, then the request
    timeout (the service's answers are small, so one read)."""
    return CONNECT_TIMEOUT_S + settings.http_timeout_s


def build_runtime(settings: Settings) -> Runtime:
    timeout = httpx.Timeout(settings.http_timeout_s, connect=CONNECT_TIMEOUT_S)
    # A call-lane worker holds one connection per synchronous call in flight: its pool must not make a call wait
    # for a connection (or time out before anything was sent). Every other process needs far fewer.
    connections = settings.call_lane_concurrency + API_CONNECTIONS
    api = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=connections))
    clients = account_clients(settings, api)
    client = make_redis(settings)
    results = ResultBucket(make_minio(settings), settings.bucket)
    downloads = httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0))
    return Runtime(
        settings=settings,
        store=make_store(settings, client),
        dashscope=next(iter(clients.values()))[0],
        results=results,
        downloads=downloads,
        quota=make_quota(settings, client),
        clients=clients,
        outbox=make_outbox(settings, client),
        durations=RedisDurations(client),
        watch_board=RedisWatchBoard(client),
        closers=[api.close, downloads.close, client.close, results.close],
    )


@functools.cache
def runtime() -> Runtime:
    """This process's runtime, on its settings (`config.celery_app.process_settings`: a worker's `--config` and
    flags included). Built on first use, so a prefork child builds its own after the fork."""
    return build_runtime(process_settings())
