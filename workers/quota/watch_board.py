"""Who watches an account's task list, and when it last did so well: one small lease per account, fleet-wide.

One watcher runs per account (`workers/watch.py`). It is started by whichever stage finds none (`claim`, a set
if absent with a lease), renews its lease every round (`hold`, which also says whether it still is the one),
and leaves when nothing of the account is in flight. Each round carries its number, and `hold` moves the number
on by compare-and-set: a message of a round that is delivered twice (a worker lost after sending the next
round, before acknowledging this one) finds the number moved on and stops, so a watcher never doubles. A watcher
whose worker died stops renewing, its lease lapses within `lease_s`, and the sweep or the next poll of the
account starts another; a message of the dead one that comes back later finds another token and stops. Polls
read `ok_at` (the last round that went well) to know whether per-task polls are only a safety net.

Redis: the hash `genq:watch:{account}` with `token`, `round`, `ok_at` and `sent` (the polls the watcher sent:
ref -> [attempt, when, how many times]), with the lease as its TTL.
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
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'round', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ok_at}
"""

# KEYS: the hash. ARGV: token, lease (ms), ok_at ("" to keep), sent, round. Returns 1 when renewed (and the
# round moved on by one), 0 when the lease is not this token's or this round is not the current one.
_HOLD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'round') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'round', tonumber(ARGV[5]) + 1)
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
class Sent:
    """A poll the watcher sent: at which attempt of the job, when, and how many times for this ref so far."""

    attempt: int
    at: float
    times: int = 1


@dataclass(frozen=True)
class WatchState:
    token: str | None = None
    ok_at: float | None = None
    sent: dict[str, Sent] = field(default_factory=dict)
    round: int = 0


class WatchBoard(Protocol):
    def claim(self, account: str, token: str, lease_s: float) -> tuple[bool, float | None]:
        """Become the account's watcher unless one holds the lease: (whether this one did, `ok_at` of the one
        that holds it)."""

    def hold(
        self, account: str, token: str, round_no: int, lease_s: float, *, ok_at: float | None, sent: dict[str, Sent]
    ) -> bool:
        """End round `round_no` of `token`: renew the lease, record a round that went well at `ok_at` (None: it did
        not), and move the round on; False when another watcher holds the lease (or none: it lapsed), or this round
        was already ended (its message was delivered twice)."""

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


def _round(value: str | None) -> int:
    """The round number; -1 (no round matches) for anything that is not one."""
    return int(value) if value and value.isascii() and value.isdigit() else -1


def _sent(value: str | None) -> dict[str, Sent]:
    """The `sent` field as written by `_dump`; anything else in it (a hand edit, an older form) is dropped."""
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    found = {}
    for ref, entry in parsed.items():
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry)
            and all(math.isfinite(v) for v in entry)
        ):
            found[str(ref)] = Sent(int(entry[0]), float(entry[1]), int(entry[2]))
    return found


def _dump(sent: dict[str, Sent]) -> str:
    return json.dumps({ref: [s.attempt, s.at, s.times] for ref, s in sent.items()})


class RedisWatchBoard:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._claim = client.register_script(_CLAIM)
        self._hold = client.register_script(_HOLD)
        self._leave = client.register_script(_LEAVE)

    def claim(self, account: str, token: str, lease_s: float) -> tuple[bool, float | None]:
        started, ok_at = self._claim(keys=[keys.watch(account)], args=[token, _ms(lease_s)])
        return bool(int(started)), _float(ok_at if isinstance(ok_at, str) else ok_at.decode())

    def hold(
        self, account: str, token: str, round_no: int, lease_s: float, *, ok_at: float | None, sent: dict[str, Sent]
    ) -> bool:
        ok = "" if ok_at is None else repr(ok_at)
        args: list[str | int] = [token, _ms(lease_s), ok, _dump(sent), str(round_no)]
        return bool(int(self._hold(keys=[keys.watch(account)], args=args)))

    def read(self, account: str) -> WatchState:
        fields = ["token", "ok_at", "sent", "round"]
        token, ok_at, sent, round_no = cast(list[str | None], self._redis.hmget(keys.watch(account), fields))
        return WatchState(token, _float(ok_at), _sent(sent), _round(round_no))

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

    def hold(
        self, account: str, token: str, round_no: int, lease_s: float, *, ok_at: float | None, sent: dict[str, Sent]
    ) -> bool:
        with self._lock:
            state = self._states.get(account)
            if state is None or state.token != token or state.round != round_no:
                return False
            kept_ok_at = ok_at if ok_at is not None else state.ok_at
            self._states[account] = WatchState(token, kept_ok_at, dict(sent), round_no + 1)
            return True

    def read(self, account: str) -> WatchState:
        with self._lock:
            return self._states.get(account) or WatchState()

    def leave(self, account: str, token: str) -> None:
        with self._lock:
            state = self._states.get(account)
            if state is not None and state.token == token:
                del self._states[account]
