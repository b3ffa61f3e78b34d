"""`genq health ROLE`: the container healthcheck of each long-running role (docker-compose.yml). Exit 0 healthy,
1 not, with the reason on stderr. Each check asks the role itself where it can, not only whether Redis answers:

- worker: this host's Celery worker answers a ping over the broker (so its pool is consuming);
- consumer: the request loop went round within `HEARTBEAT_MAX_AGE_S` (it touches `HEARTBEAT_FILE` every round)
  and Redis answers;
- beat: Redis answers (beat ends and is started again by `genq beat` when it loses Redis, so a live process
  with Redis is a working beat);
- flower and sim: their HTTP endpoint answers on this host.
"""

from __future__ import annotations

import socket
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import typer

from config.celery_app import create_app
from config.settings import Settings
from producer.cli.common import ConfigOption, fail, settings_for
from producer.services import redis_problem

#: Touched by `genq consume` at every round of its loop; in a container, /tmp is the container's own.
HEARTBEAT_FILE = Path(tempfile.gettempdir()) / "genq-consume.heartbeat"
#: A round blocks at most a few seconds on the stream; a minute without one is a loop that is stuck.
HEARTBEAT_MAX_AGE_S = 60.0


class Role(StrEnum):
    worker = "worker"
    consumer = "consumer"
    beat = "beat"
    flower = "flower"
    sim = "sim"


def beat_heart() -> None:
    """Record one round of the consumer's loop."""
    HEARTBEAT_FILE.touch()


def health(
    role: Annotated[Role, typer.Argument(help="The role this container runs.")],
    port: Annotated[int | None, typer.Option(help="flower / sim: the port they serve (5555 / 8089).")] = None,
    config: ConfigOption = None,
) -> None:
    """Exit 0 when this host's ROLE is healthy, else 1 with the reason (a container healthcheck)."""
    settings = settings_for(config)
    problem = (redis_problem(settings) if role is not Role.sim else None) or _role_problem(settings, role, port)
    if problem is not None:
        raise fail(f"{role.value} unhealthy: {problem}", 1)


def _role_problem(settings: Settings, role: Role, port: int | None) -> str | None:
    """What is wrong with the role itself (its services answer), or None."""
    if role is Role.worker:
        node = f"celery@{socket.gethostname()}"
        celery = create_app(settings)
        try:
            replies = celery.control.ping(destination=[node], timeout=5.0)
        finally:
            celery.close()
        return None if replies else f"the worker {node} does not answer a ping"
    if role is Role.consumer:
        age_s = time.time() - HEARTBEAT_FILE.stat().st_mtime if HEARTBEAT_FILE.exists() else None
        if age_s is None:
            return "the request loop has not gone round since it started"
        return f"the request loop has not gone round for {age_s:.0f} s" if age_s > HEARTBEAT_MAX_AGE_S else None
    if role in (Role.flower, Role.sim):
        path = "/healthcheck" if role is Role.flower else "/_sim/health"
        url = f"http://127.0.0.1:{port or (5555 if role is Role.flower else 8089)}{path}"
        try:
            answered = httpx.get(url, timeout=5.0).status_code == 200
        except httpx.HTTPError:
            answered = False
        return None if answered else f"{url} does not answer 200"
    return None  # beat: a live process whose Redis answers
