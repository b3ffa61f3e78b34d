"""What a worker process stands on, built once per process from the settings (after the fork, lazily)."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

from config.settings import Settings, load_settings
from workers.dashscope import DashScopeClient
from workers.storage import ResultStore, make_minio
from workers.store import JobStore


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    dashscope: DashScopeClient
    results: ResultStore
    downloads: httpx.Client
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)


def make_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def make_store(settings: Settings) -> JobStore:
    return JobStore(
        make_redis(settings), event_stream=settings.event_stream, event_stream_maxlen=settings.event_stream_maxlen
    )


def build_runtime(settings: Settings) -> Runtime:
    if settings.dashscope_api_key is None:
        raise RuntimeError("workers need DASHSCOPE_API_KEY (the local stack sets the simulator's key)")
    timeout = httpx.Timeout(settings.http_timeout_s, connect=5.0)
    api = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=20))
    return Runtime(
        settings=settings,
        store=make_store(settings),
        dashscope=DashScopeClient(
            api, base_url=settings.base_url, api_key=settings.dashscope_api_key.get_secret_value()
        ),
        results=ResultStore(make_minio(settings), settings.bucket),
        downloads=httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)),
    )


@functools.cache
def runtime() -> Runtime:
    """This process's runtime. Built on first use, so a prefork child builds its own after the fork."""
    return build_runtime(load_settings())
