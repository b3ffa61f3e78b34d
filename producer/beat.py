"""`genq beat`: Celery beat kept running across Redis restarts.

Beat exits when it loses Redis, so this loop starts it again with backoff. Redis with AOF also brings back
beat's redbeat lock, still held by the beat that just lost it and valid for up to 30 s more: the restarted
scheduler would wait all that time with no recovery sweep running. So the loop remembers the lock's token
when beat goes down and gives that lock back (compare-and-delete: only if the token is still ours) as soon
as Redis answers again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.signals import beat_init

#: Delete the key only while it holds our token (redis-py's own release clears its token before it knows the
#: release happened, so it cannot be retried after a failed attempt).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


@dataclass(frozen=True)
class HeldLock:
    name: str
    token: bytes


def run_beat(celery: Celery, redis_url: str, say: Callable[[str], None]) -> None:
    """Run beat until a clean stop (SIGTERM / SIGINT), starting it again whenever it loses Redis."""
    services: list[Any] = []  # each beat service started, to find its lock after it lost Redis
    beat_init.connect(lambda sender, **_: services.append(sender), weak=False)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    failures, held = 0, None
    while True:
        started = time.monotonic()
        held = give_back(client, held, say)
        try:
            celery.Beat(loglevel="INFO").run()
            return
        except (redis.RedisError, OSError) as exc:
            held = held or _lock_of(services[-1] if services else None)
            failures = 1 if time.monotonic() - started > 60 else failures + 1
            delay_s = min(30.0, 2.0**failures)
            say(f"beat lost Redis ({type(exc).__name__}); starting again in {delay_s:.0f} s")
            # Beat's own SIGTERM handler (installed by the run that just ended) would sync its schedule to the
            # Redis that is gone and hang there: between runs, a stop is a plain exit (a container's `stop` while
            # Redis is already down must not wait out its grace period).
            signal.signal(signal.SIGTERM, _stop_now)
            time.sleep(delay_s)


def _stop_now(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _lock_of(service: Any) -> HeldLock | None:
    """The redbeat lock a beat service held (its name and token), or None if it held none."""
    lock = getattr(getattr(service, "scheduler", None), "lock", None)
    token = getattr(getattr(lock, "local", None), "token", None)
    return HeldLock(str(lock.name), token) if lock is not None and token else None


def give_back(client: redis.Redis, held: HeldLock | None, say: Callable[[str], None]) -> HeldLock | None:
    """Release a lock a lost beat held, if it is still ours. Returns it while Redis is still away (try again
    next time), else None."""
    if held is None:
        return None
    try:
        released = client.eval(_RELEASE, 1, held.name, held.token)
    except (redis.RedisError, OSError):
        return held
    if released:
        say("beat gave back the lock it held when Redis went away")
    return None
