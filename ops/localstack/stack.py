"""The local stack: start whatever the configured services lack, hand back settings that point at them,
and stop everything on exit.

- Redis: the configured URL answers -> used as is. It does not, and its host is loopback -> a Valkey server
  is started on that port with its data in `{state_dir}/redis`. Otherwise: a clear error.
- S3: the same, with SeaweedFS `weed mini` on the configured port and data in `{state_dir}/s3`; credentials
  are generated once and kept in `{state_dir}/local-secrets.json` (mode 0600).
- DashScope: no `DASHSCOPE_API_KEY` -> the simulator on a free port, with a generated key.
- Workers: started when asked and none is attached (always when this stack started the Redis itself): beat,
  the stage workers asked for, one webhook worker (`webhook-worker`, the `webhooks` queue only) and one worker of
  the synchronous-call lane (`call-worker`, the `call` queue only, threads).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, SecretStr

from config.logging import register_secrets
from config.settings import Settings, redis_url_with_password
from ops.localstack import services
from ops.localstack.process import ManagedProcess, StackError, free_port, is_listening
from workers.call import call_lease_s

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


#: Processes other processes of the stack depend on: stopped after the clients.
_SERVICES = frozenset({"redis", "s3", "simulator"})


#: The local secrets, generated once per state folder: S3 keys, the simulator's API key, the local Redis's password.
_LOCAL_SECRETS: dict[str, Callable[[], str]] = {
    "s3_access_key": lambda: "genq" + secrets.token_hex(6),
    "s3_secret_key": lambda: secrets.token_urlsafe(24),
    "simulator_api_key": lambda: "local-" + secrets.token_urlsafe(18),
    "redis_password": lambda: secrets.token_urlsafe(24),
}


def private_state_dir(state_dir: Path) -> Path:
    """The local stack's folder, made private (0700): it holds Redis's AOF (prompts, signed result URLs), the
    S3 data, logs and the local secrets. A folder made by an earlier version is tightened too."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if state_dir.stat().st_mode & 0o077:
        state_dir.chmod(0o700)
    return state_dir


def _local_secrets(state_dir: Path) -> dict[str, str]:
    """The state folder's secrets (mode 0600), created or completed (a file of an earlier version lacks the
    Redis password) on first use. Under a lock on the folder: two commands starting at once agree on them."""
    folder = private_state_dir(state_dir)
    path = folder / "local-secrets.json"
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        missing = {name: make() for name, make in _LOCAL_SECRETS.items() if name not in loaded}
        if missing:
            loaded.update(missing)
            fd, fresh = tempfile.mkstemp(dir=folder, prefix=".local-secrets.")  # created 0600
            with os.fdopen(fd, "w") as handle:
                json.dump(loaded, handle)
            os.replace(fresh, path)
    register_secrets(*(SecretStr(value) for value in loaded.values()))
    return loaded


def isolated_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings for a stack of its own: Redis and S3 on free loopback ports (so `LocalStack` starts them), data
    under `state_dir`. For tests and benchmarks that must not meet any other stack on the machine."""
    return Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        s3_endpoint=f"127.0.0.1:{free_port(with_grpc_offset=True)}",
        state_dir=state_dir,
        **overrides,
    )


def _env_value(value: Any) -> str:
    """A setting as its environment variable holds it: secrets revealed (the environment is private to the
    child, never its argv), structures as JSON."""

    def reveal(obj: Any) -> Any:
        if isinstance(obj, SecretStr):
            return obj.get_secret_value()
        if isinstance(obj, BaseModel):
            return {k: reveal(v) for k, v in obj if v is not None}
        if isinstance(obj, dict):
            return {k: reveal(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [reveal(v) for v in obj]
        return obj

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, dict, BaseModel)):
        return json.dumps(reveal(value))
    return str(value)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment a genq child process needs to see these settings (secrets included, never logged):
    every setting that differs from its default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_") or k == "GENQ_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    always = {"redis_url", "s3_endpoint", "bucket", "state_dir"}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        default = info.get_default(call_default_factory=True)
        if value is None or (name not in always and value == default):
            continue
        env["DASHSCOPE_API_KEY" if name == "dashscope_api_key" else f"GENQ_{name.upper()}"] = _env_value(value)
    return env


def workers_attached(settings: Settings) -> bool:
    """Whether any Celery worker answers a ping on this broker within a second."""
    from config.celery_app import create_app

    app = create_app(settings)
    try:
        return bool(app.control.ping(timeout=1.0))
    except Exception:  # a broker that drops mid-ping: no worker known
        return False
    finally:
        app.close()


@dataclass
class LocalStack:
    """`with LocalStack(settings, workers=1) as stack:` then use `stack.settings`."""

    configured: Settings
    workers: int = 0
    simulator_time_scale: float | None = None
    simulator_seed: int | None = None  # the simulator's random seed (faults, durations): a run can be replayed
    metrics: bool = False  # serve each local worker's Prometheus metrics on a free port
    metrics_urls: list[str] = field(default_factory=list, init=False)
    settings: Settings = field(init=False)
    started: list[ManagedProcess] = field(default_factory=list, init=False)
    simulator_url: str | None = field(default=None, init=False)
    # How to start each service this stack started again, on the same port and data (`start_again`).
    _starts: dict[str, Callable[[], ManagedProcess]] = field(default_factory=dict, init=False)

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def log_dir(self) -> Path:
        return self.configured.state_dir / "logs"

    def _start(self) -> None:
        state = self.configured.state_dir.resolve()
        updates: dict[str, Any] = {"state_dir": state}
        local = _local_secrets(state)
        base_env = dict(os.environ)
        redis_url, started_redis = self._ensure_redis(state, local["redis_password"])
        updates["redis_url"] = redis_url
        updates.update(self._ensure_s3(state, local, base_env))
        if self.configured.uses_simulator:
            port = self.configured.simulator_port or free_port()
            self._add(
                services.start_simulator(
                    port,
                    self.log_dir,
                    api_key=local["simulator_api_key"],
                    profile=self.configured.simulator_profile,
                    base_env=base_env,
                    time_scale=self.simulator_time_scale,
                    seed=self.simulator_seed,
                )
            )
            self.simulator_url = f"http://127.0.0.1:{port}"
            updates.update(
                dashscope_api_key=SecretStr(local["simulator_api_key"]),
                dashscope_base_url=f"{self.simulator_url}/api/v1",
                result_hosts=(*self.configured.result_hosts, f"127.0.0.1:{port}"),
                require_https_results=False,
            )
        self.settings = self.configured.model_copy(update=updates)
        register_secrets(self.settings.s3_secret_key, self.settings.dashscope_api_key)
        if self.workers and (started_redis or not workers_attached(self.settings)):
            self._add(services.start_beat(self.log_dir, env=child_env(self.settings)))
            for index in range(self.workers):
                self.start_worker(f"local{index + 1}")
            self._add(services.start_webhook_worker(self.log_dir, env=child_env(self.settings)))
            self._add(
                services.start_call_worker(
                    self.log_dir,
                    env=child_env(self.settings),
                    concurrency=self.settings.call_lane_concurrency,
                    stop_grace_s=call_lease_s(self.settings.sync_call_timeout_s),
                )
            )

    def start_worker(self, name: str) -> ManagedProcess:
        """Start one more Celery worker (`worker-{name}`) on this stack's settings."""
        state = self.settings.state_dir
        env, metrics_dir = child_env(self.settings), None
        if self.metrics:
            port = free_port()
            env["GENQ_METRICS_PORT"] = str(port)
            metrics_dir = state / "metrics" / name
            self.metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
        process = services.start_worker(
            self.log_dir,
            concurrency=self.configured.worker_concurrency,
            env=env,
            name=name,
            metrics_dir=metrics_dir,
        )
        self._add(process)
        return process

    def _ensure_redis(self, state: Path, password: str) -> tuple[str, bool]:
        """The Redis URL to use, and whether this stack started that Redis. A configured Redis that answers is
        used as is; so is this state folder's own (password-protected) Redis if another command started it;
        else one is started on the configured loopback port, asking for the folder's password."""
        url = self.configured.redis_url
        if services.redis_ready(url, timeout_s=services.PRESENCE_TIMEOUT_S):
            return url, False
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 6379
        if host not in LOOPBACK:
            raise StackError(
                f"Redis at {host}:{port} does not answer (GENQ_REDIS_URL); genq starts a local "
                "Redis only for a loopback address"
            )
        own = redis_url_with_password(url, password)
        if services.redis_ready(own, timeout_s=services.PRESENCE_TIMEOUT_S):
            return own, False
        if is_listening("127.0.0.1", port):
            raise StackError(
                f"port {port} on 127.0.0.1 is taken by something that is not Redis; set GENQ_REDIS_URL to another port"
            )
        self._starts["redis"] = lambda: services.start_redis(state / "redis", port, self.log_dir, password=password)
        self._add(self._starts["redis"]())
        return own, True

    def _ensure_s3(self, state: Path, local: dict[str, str], base_env: dict[str, str]) -> dict[str, Any]:
        endpoint = self.configured.s3_endpoint
        host, _, port_text = endpoint.rpartition(":")
        using_local_keys = self.configured.s3_access_key is None
        updates: dict[str, Any] = {}
        if using_local_keys:
            updates = {
                "s3_access_key": SecretStr(local["s3_access_key"]),
                "s3_secret_key": SecretStr(local["s3_secret_key"]),
                "s3_secure": False,
            }
        if services.s3_ready(endpoint, timeout_s=services.PRESENCE_TIMEOUT_S):
            return updates
        if host not in LOOPBACK:
            raise StackError(
                f"S3 at {endpoint} does not answer (GENQ_S3_ENDPOINT); genq starts a local S3 "
                "server only for a loopback address"
            )
        if not using_local_keys:
            raise StackError(
                f"S3 at {endpoint} does not answer, and GENQ_S3_ACCESS_KEY is set: start that "
                "server, or unset the keys to let genq run its own"
            )
        keys = updates["s3_access_key"].get_secret_value(), updates["s3_secret_key"].get_secret_value()
        self._starts["s3"] = lambda: services.start_s3(
            state / "s3", int(port_text), self.log_dir, access_key=keys[0], secret_key=keys[1], base_env=base_env
        )
        self._add(self._starts["s3"]())
        return updates

    def _add(self, process: ManagedProcess) -> None:
        self.started.append(process)

    def simulator_counters(self) -> dict[str, Any] | None:
        if self.simulator_url is None:
            return None
        counters: dict[str, Any] = httpx.get(f"{self.simulator_url}/_sim/counters", timeout=5).json()
        return counters

    def process(self, name: str) -> ManagedProcess:
        """A process this stack started, by name (`redis`, `s3`, `simulator`, `beat`, `worker-local1`, ...)."""
        return next(p for p in self.started if p.name == name)

    def start_again(self, name: str) -> ManagedProcess:
        """Start a service this stack started (`redis` or `s3`) again, on the same port and data, after it was
        stopped; the new process takes the old one's place in `started`."""
        start = self._starts.get(name)
        if start is None:
            raise StackError(f"this stack did not start {name}")
        process = start()
        self.started[self.started.index(self.process(name))] = process
        return process

    def stop(self) -> None:
        """Stop what this stack started: its clients (workers, beat) all at once, then the services they use
        (Redis, S3, the simulator) all at once; each waits out its own grace, so the stack stops in about the
        time of its slowest process rather than the sum of them all."""
        clients = [p for p in self.started if p.name not in _SERVICES]
        services = [p for p in self.started if p.name in _SERVICES]
        for tier in (clients, services):
            with ThreadPoolExecutor(max_workers=max(1, len(tier))) as pool:
                list(pool.map(lambda process: process.stop(), tier))
        self.started.clear()
