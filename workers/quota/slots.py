"""A leased semaphore: at most `limit` holders per key, each holding until it releases or its lease lapses.

A slot stands for a task running (or queued) upstream, so its holder is the *job*, not a worker: each
submit and poll of the job renews the lease, and a release comes the moment a poll sees the task end. The
lease only lapses when nobody has looked after the job for a whole lease (`GENQ_SLOT_LEASE_S`, far longer
than any poll interval plus the recovery sweep's re-send), so it never lapses while the task may still run
and a job whose every worker died gives its slot back in the end. Acquiring never admits more than `limit`:
lapsed leases are dropped first, in the same atomic step.

Redis: a sorted set of holders scored by lease expiry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, cast

import redis

# KEYS: the slot set. ARGV: holder, limit, lease_until, now. Returns 1 when the holder holds a slot now.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the slot set. ARGV: holder, lease_until. Returns 1 when the holder held a slot (now renewed).
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


class Slots(Protocol):
    def acquire(self, key: str, holder: str, *, limit: int, lease_until: float, now: float) -> bool:
        """Take a slot for `holder` (True also when it already holds one, whose lease is then renewed)."""

    def renew(self, key: str, holder: str, *, lease_until: float) -> bool:
        """Extend `holder`'s lease; False when it holds no slot."""

    def release(self, key: str, holder: str) -> bool:
        """Give the slot back; False when `holder` held none."""

    def holders(self, key: str, now: float) -> list[str]:
        """Who holds a slot with a lease still running at `now`."""

    def held(self, keys: Sequence[str], now: float) -> list[int]:
        """How many hold a slot of each key with a lease still running at `now` (one round trip)."""


class RedisSlots:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def acquire(self, key: str, holder: str, *, limit: int, lease_until: float, now: float) -> bool:
        return bool(self._acquire(keys=[key], args=[holder, limit, repr(lease_until), repr(now)]))

    def renew(self, key: str, holder: str, *, lease_until: float) -> bool:
        return bool(self._renew(keys=[key], args=[holder, repr(lease_until)]))

    def release(self, key: str, holder: str) -> bool:
        return bool(self._redis.zrem(key, holder))

    def holders(self, key: str, now: float) -> list[str]:
        return cast(list[str], self._redis.zrangebyscore(key, now, "+inf"))

    def held(self, keys: Sequence[str], now: float) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zcount(key, now, "+inf")
        return [int(n) for n in pipe.execute()]


class MemorySlots:
    def __init__(self) -> None:
        self._leases: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, holder: str, *, limit: int, lease_until: float, now: float) -> bool:
        with self._lock:
            leases = self._leases.setdefault(key, {})
            for lapsed in [h for h, until in leases.items() if until < now]:
                del leases[lapsed]
            if holder not in leases and len(leases) >= limit:
                return False
            leases[holder] = lease_until
            return True

    def renew(self, key: str, holder: str, *, lease_until: float) -> bool:
        with self._lock:
            leases = self._leases.get(key, {})
            if holder not in leases:
                return False
            leases[holder] = lease_until
            return True

    def release(self, key: str, holder: str) -> bool:
        with self._lock:
            return self._leases.get(key, {}).pop(holder, None) is not None

    def holders(self, key: str, now: float) -> list[str]:
        with self._lock:
            return sorted(h for h, until in self._leases.get(key, {}).items() if until >= now)

    def held(self, keys: Sequence[str], now: float) -> list[int]:
        with self._lock:
            return [sum(1 for until in self._leases.get(key, {}).values() if until >= now) for key in keys]
