"""A GCRA rate limiter: "go" (0.0) or "wait N seconds", never blocking.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request. A request at `now`
is allowed when `TAT - (burst - 1) * T <= now`, with `T = 1 / rate`; allowing it moves TAT on by `T`. With
`burst = 1` requests are spaced exactly `T` apart, which is what a service counting requests in a sliding
one-second window needs: a burst that fits "5 per second" on our clock can still land as 6 in one of its
windows after network jitter.
"""

from __future__ import annotations

import threading
from typing import Protocol

import redis

# KEYS: the TAT key. ARGV: now (s), interval T (s), burst. Returns the wait in seconds as a string ("0": go).
_TAKE = """
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - interval * (burst - 1)
if allow_at > now then return tostring(allow_at - now) end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1000)
return '0'
"""


class RateLimiter(Protocol):
    def take(self, key: str, rate_per_s: float, now: float, *, burst: int = 1) -> float:
        """Take one request of `key`'s rate: 0.0 when it may go now, else the seconds to wait."""


def _check(rate_per_s: float, burst: int) -> float:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate_per_s} burst={burst}")
    return 1.0 / rate_per_s


class RedisRateLimiter:
    """One limiter for the whole fleet: the TAT lives in Redis and is moved by one Lua step."""

    def __init__(self, client: redis.Redis) -> None:
        self._take = client.register_script(_TAKE)

    def take(self, key: str, rate_per_s: float, now: float, *, burst: int = 1) -> float:
        interval = _check(rate_per_s, burst)
        return float(self._take(keys=[key], args=[repr(now), repr(interval), burst]))


class MemoryRateLimiter:
    """The same arithmetic for one process (tests, and a single-process embedding)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate_per_s: float, now: float, *, burst: int = 1) -> float:
        interval = _check(rate_per_s, burst)
        with self._lock:
            tat = max(self._tat.get(key, 0.0), now)
            allow_at = tat - interval * (burst - 1)
            if allow_at > now:
                return allow_at - now
            self._tat[key] = tat + interval
            return 0.0
