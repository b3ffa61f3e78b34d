"""Who watches an account's task list, and when it last did so well: one small lease per account, fleet-wide.

One watcher runs per account (`workers/watch.py`). It is started by whichever stage finds none (`claim`, a set
if absent with a lease), renews its lease every round (`hold`, which also says whether it still is the one),
and leaves when nothing of the account is in flight. A watcher whose worker died stops renewing, its lease
lapses within `lease_s`, and the next poll of the account starts another; a message of the dead one that comes
back later finds another token and stops. Polls read `ok_at` (the last round that went well) to know whether
per-task polls are only a safety net.

Redis: the hash `genq:watch:{account}` with `token`, `ok_at` and `sent` (the polls the last round sent), with
the lease as its TTL.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Protocol, cast

import redis

from workers.jobstore import keys

# KEYS: the hash. ARGV: token, lease (ms). Returns {started (0/1), ok_at or ""}.
_CLAIM = """
local token = redis.call('HGET', KEYS[1], 'token')
local ok_at = redis.call('HGET', KEYS[1], 'ok_at') or ''
if token then return {0, ok_at} end
redis.call('HSET', KEYS[1], 'token', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ok_at}
"""

# KEYS: the hash. ARGV: token, lease (ms), ok_at ("" to keep), sent. Returns 1 when renewed, 0 when not ours.
_HOLD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'ok_at', ARGV[3]) end
redis.call('HSET', KEYS[1], 'sent', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the hash. ARGV: token.
_LEAVE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class WatchState:
    token: str | None = None
    ok_at: float | None = None
    sent: dict[str, int] = field(default_factory=dict)  # ref -> the attempt whose poll the last round sent


class WatchBoard(Protocol):
    def claim(self, account: str, token: str, lease_s: float) -> tuple[bool, float | None]:
        """Become the account's watcher unless one holds the lease: (whether this one did, `ok_at` of the one
        that holds it)."""

    def hold(self, account: str, token: str, lease_s: float, *, ok_at: float | None, sent: dict[str, int]) -> bool:
        """Renew `token`'s lease, recording a round that went well at `ok_at` (None: it did not); False when
        another watcher holds the lease (or none: it lapsed)."""

    def read(self, account: str) -> WatchState: ...

    def leave(self, account: str, token: str) -> None:
        """Give the lease up, if `token` holds it."""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _sent(value: str | None) -> dict[str, int]:
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): v for k, v in parsed.items() if isinstance(v, int) and not isinstance(v, bool)}


class RedisWatchBoard:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._claim = client.register_script(_CLAIM)
        self._hold = client.register_script(_HOLD)
        self._leave = client.register_script(_LEAVE)

    def claim(self, account: str, token: str, lease_s: float) -> tuple[bool, float | None]:
        started, ok_at = self._claim(keys=[keys.watch(account)], args=[token, _ms(lease_s)])
        return bool(int(started)), _float(ok_at if isinstance(ok_at, str) else ok_at.decode())

    def hold(self, account: str, token: str, lease_s: float, *, ok_at: float | None, sent: dict[str, int]) -> bool:
        ok = "" if ok_at is None else repr(ok_at)
        return bool(int(self._hold(keys=[keys.watch(account)], args=[token, _ms(lease_s), ok, json.dumps(sent)])))

    def read(self, account: str) -> WatchState:
        token, ok_at, sent = cast(list[str | None], self._redis.hmget(keys.watch(account), ["token", "ok_at", "sent"]))
        return WatchState(token, _float(ok_at), _sent(sent))

    def leave(self, account: str, token: str) -> None:
        self._leave(keys=[keys.watch(account)], args=[token])


class MemoryWatchBoard:
    """The same for one process (tests). Leases do not lapse by themselves here: `leave` ends them."""

    def __init__(self) -> None:
        self._states: dict[str, WatchState] = {}
        self._lock = threading.Lock()

    def claim(self, account: str, token: str, lease_s: float) -> tuple[bool, float | None]:
        with self._lock:
            state = self._states.get(account)
            if state is not None and state.token is not None:
                return False, state.ok_at
            self._states[account] = WatchState(token, state.ok_at if state else None)
            return True, state.ok_at if state else None

    def hold(self, account: str, token: str, lease_s: float, *, ok_at: float | None, sent: dict[str, int]) -> bool:
        with self._lock:
            state = self._states.get(account)
            if state is None or state.token != token:
                return False
            self._states[account] = WatchState(token, ok_at if ok_at is not None else state.ok_at, dict(sent))
            return True

    def read(self, account: str) -> WatchState:
        with self._lock:
            return self._states.get(account) or WatchState()

    def leave(self, account: str, token: str) -> None:
        with self._lock:
            state = self._states.get(account)
            if state is not None and state.token == token:
                del self._states[account]
