"""The one seam to the local stack: the only module of `producer/` that imports `ops.localstack`. The command
line (`producer/cli/services.py` words its failures) and the Python API (`producer/api.py`) open services here.

Whoever needs Redis, S3 or DashScope asks for them here, and gets back only what it uses:

    with open_services(settings, workers=1) as services:
        store = make_store(services.settings)

`services.settings` are the settings to use from then on. Two forms:

- **production** (the default): genq starts nothing. Redis and S3 must answer and a DashScope API key must be
  set; otherwise the command ends with exit code 3 naming the service, before anything is changed. A command
  that waits for its jobs warns when no worker is attached.
- **local** (`--local`, or `local = true`): every configured service that answers is used as is; a loopback
  address that does not is started for the command's duration (a local Redis or S3 server, with its data
  under `state_dir`), as is the DashScope simulator when no API key is set, and, with `workers`, Celery
  workers when none is attached; everything started is stopped as the block ends. `simulator_url` and
  `simulator_counters()` tell `genq batch` what the simulator saw.

A service that cannot be reached or started, or S3 or Redis trouble inside the block, raises `ServiceMissing`
with one sentence naming it (the command line ends with it and exit code 3).

The rest of the local stack (its processes, starting one more worker, the chaos hooks of `ops/chaos/`) is
development harness, not part of the command line: `Services` does not show it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis

from config.settings import Settings
from ops.localstack import LocalStack, StackError
from ops.localstack.services import s3_ready
from ops.localstack.stack import LOOPBACK, workers_attached
from workers.errors import StorageError


class ServiceMissing(Exception):
    """A service genq needs cannot be used: the message names it (never a password) and says why."""


class Services(Protocol):
    """What a command sees of the services it asked for."""

    @property
    def settings(self) -> Settings:
        """The settings to use: pointing at the services started for this command, if any."""
        ...

    @property
    def simulator_url(self) -> str | None:
        """The local DashScope simulator's address, when one was started (no API key)."""
        ...

    def simulator_counters(self) -> dict[str, Any] | None:
        """The local simulator's counters (`/_sim/counters`), or None when none was started."""
        ...


@dataclass(frozen=True)
class Configured:
    """The production form's services: exactly those the settings name, started by someone else."""

    settings: Settings
    simulator_url: str | None = None

    def simulator_counters(self) -> dict[str, Any] | None:
        return None


#: How long a production command waits for a service to answer before naming it unreachable.
ANSWER_TIMEOUT_S = 5.0
LOCAL_HINT = "(to run everything on this machine instead, add --local)"


def unreachable(settings: Settings, *, s3: bool = True, dashscope: bool = True, hint: bool = True) -> str | None:
    """What the production form lacks, named, or None when Redis (and, with `s3`, S3) answer and (with
    `dashscope`) an API key is set. The `--local` hint is offered only where the local form could help: a
    loopback Redis that nothing answers on."""
    local = f" {LOCAL_HINT}" if hint and _loopback(settings) else ""
    redis_missing = redis_problem(settings)
    if redis_missing is not None:
        return redis_missing + (local if redis_missing.startswith("Redis does not answer") else "")
    if s3 and not s3_ready(settings.s3_endpoint, timeout_s=ANSWER_TIMEOUT_S, secure=settings.s3_secure):
        return f"the S3 server does not answer at {settings.s3_endpoint} (GENQ_S3_ENDPOINT){local}"
    if dashscope and settings.uses_simulator:
        return f"no DashScope API key: set DASHSCOPE_API_KEY, or give it as a secrets file{local}"
    return None


def _loopback(settings: Settings) -> bool:
    return settings.redis_url.startswith("unix://") or urlsplit(settings.redis_url).hostname in LOOPBACK


def redis_problem(settings: Settings) -> str | None:
    """Why Redis cannot be used, in one sentence naming it (without its password), or None when it answers."""
    where = f"at {redis_address(settings.redis_url)} (GENQ_REDIS_URL)"
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=ANSWER_TIMEOUT_S, socket_timeout=ANSWER_TIMEOUT_S
    )
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:  # NOAUTH may come as either
        if not isinstance(exc, redis.AuthenticationError) and not re.match("(NOAUTH|WRONGPASS)", str(exc)):
            return f"Redis {where} answered with an error: {exc}"
        if client.connection_pool.connection_kwargs.get("password"):
            return f"Redis {where} refused the password (GENQ_REDIS_PASSWORD, the secrets file, or the URL)"
        return f"Redis {where} asks for a password, and none was given (GENQ_REDIS_PASSWORD or a secrets file)"
    except (redis.RedisError, OSError) as exc:
        return f"Redis does not answer {where}: {exc.__class__.__name__}"
    finally:
        client.close()
    return None


def redis_address(url: str) -> str:
    """Where a Redis URL points (host:port, or a socket's path), never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


#: What a use may meet from Redis half-way (a restart, a lost connection): it ends, naming Redis.
_REDIS_LOST = (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError)


@contextmanager
def open_services(
    settings: Settings,
    *,
    workers: int = 0,
    s3: bool = True,
    dashscope: bool = True,
    warn: Callable[[str], None] = lambda _: None,
) -> Iterator[Services]:
    """The services `settings` name for the block. In the local form they are started as needed (with `workers`
    local Celery workers if none is attached) and stopped after it; in the production form they are only
    checked: Redis always, S3 with `s3`, an API key with `dashscope` (a use that reads only what Redis holds
    asks for neither), and `warn` is told when `workers` are wanted and none is attached. A service missing or
    lost half-way raises `ServiceMissing`."""
    if not settings.local:
        missing = unreachable(settings, s3=s3, dashscope=dashscope)
        if missing is not None:
            raise ServiceMissing(missing)
        if workers and not workers_attached(settings):
            warn("no genq worker answers on this Redis: jobs wait until one starts")
        with _ended_clearly(settings):
            yield Configured(settings)
        return
    with ExitStack() as started:
        try:
            stack = started.enter_context(LocalStack(settings, workers=workers))
        except (StackError, StorageError) as exc:
            raise ServiceMissing(str(exc)) from exc
        except OSError as exc:  # the state folder cannot be made or written (a read-only or foreign path)
            folder = f"{settings.state_dir} (GENQ_STATE_DIR)"
            raise ServiceMissing(f"the local form cannot use its state folder {folder}: {exc.strerror or exc}") from exc
        with _ended_clearly(settings):
            yield stack


@contextmanager
def _ended_clearly(settings: Settings) -> Iterator[None]:
    """A service failing inside the block: one sentence naming it, no traceback of the library that met it."""
    try:
        yield
    except (StackError, StorageError) as exc:
        raise ServiceMissing(str(exc)) from exc
    except _REDIS_LOST as exc:
        where = redis_address(settings.redis_url)
        raise ServiceMissing(f"Redis at {where} stopped answering ({type(exc).__name__})") from exc
