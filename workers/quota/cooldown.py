"""The pause after a 429, seen by every worker at once, and the effective rate and slot count it adapts (AIMD).

A 429 (`Throttling*`) for a scope means every worker should stop sending to it for a moment, not just the
one that was told. `trip` sets the scope's pause to `base * 2^strikes` (capped), stretched by a random
factor in [1, 1.5) so that the fleet does not come back in step, and halves the scope's rate factor once per
second at most (the 429s of requests already in flight say the same thing once). Every create that
succeeds outside a pause clears the strikes and adds `step` back to the factor, at most once per second, up
to 1. So a configured limit that is too high converges on what the service allows; a right one costs
nothing.

The slot count adapts the same way where the service refuses tasks beyond its concurrency with a 429 instead of
queueing them (throttle mode): `cut_slots` caps the scope at the number of its tasks still upstream (what the
service just said is its limit, or more), and the cap grows back by one slot per `slot_probe_s` (a
probe costs at most one 429, which cuts it again). The cap is read, not stored, as it grows
(`slot_cap + elapsed // probe`), so no worker has to raise it.

Redis: one hash per scope with `until`, `factor`, `strikes`, `cut_at`, `raised_at`, `slot_cap`, `cap_at` (TTL one
hour).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, cast

import redis

#: The factor never falls below this: a scope keeps trying, slowly, even after many 429s.
FACTOR_FLOOR = 1 / 16
DECREASE = 0.5
TTL_S = 3600

# KEYS: the scope's hash. ARGV: now, base_s, cap_s, stretch (1..1.5), factor floor, decrease, TTL.
# Returns {until, factor} as strings.
_TRIP = """
local now, base, cap, stretch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'until', 'factor', 'strikes', 'cut_at')
local until_at, factor = tonumber(h[1] or '0'), tonumber(h[2] or '1')
local strikes, cut_at = tonumber(h[3] or '0'), tonumber(h[4] or '-1e18')
local pause = math.min(cap, base * 2 ^ strikes) * stretch
if now + pause > until_at then until_at = now + pause end
if now - cut_at >= 1 then
  factor = math.max(tonumber(ARGV[5]), factor * tonumber(ARGV[6]))
  cut_at = now
  strikes = strikes + 1
end
redis.call('HSET', KEYS[1], 'until', tostring(until_at), 'factor', tostring(factor), 'strikes', strikes,
           'cut_at', tostring(cut_at))
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {tostring(until_at), tostring(factor)}
"""

# KEYS: the scope's hash. ARGV: now, cap, TTL.
_CUT_SLOTS = """
redis.call('HSET', KEYS[1], 'slot_cap', ARGV[2], 'cap_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""

# KEYS: the scope's hash. ARGV: now, step, TTL. Returns the factor as a string.
_SUCCEEDED = """
local now, step = tonumber(ARGV[1]), tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'until', 'factor', 'raised_at')
if not h[2] then return '1' end
local factor = tonumber(h[2])
if now < tonumber(h[1] or '0') or now - tonumber(h[3] or '-1e18') < 1 then return tostring(factor) end
factor = math.min(1, factor + step)
redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'strikes', 0, 'raised_at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(factor)
"""


@dataclass(frozen=True)
class CooldownState:
    wait_s: float  # how long the scope is still paused (0.0: not paused)
    factor: float  # multiplies the configured submit rate (1.0: as configured)
    slot_cap: int | None = None  # the slot count a 429 cut the scope to (None: as configured)
    cap_at: float = 0.0  # when it was cut

    def slots(self, configured: int, now: float, probe_s: float) -> int:
        """The scope's slot count now: the cut one, plus one per `probe_s` since, at most `configured`."""
        if self.slot_cap is None:
            return configured
        return min(configured, self.slot_cap + int(max(0.0, now - self.cap_at) // probe_s))


class Cooldowns(Protocol):
    def trip(self, key: str, now: float, *, base_s: float, cap_s: float, stretch: float) -> CooldownState:
        """A 429 was seen: pause the scope (and cut its factor, once per second)."""

    def succeeded(self, key: str, now: float, *, step: float) -> float:
        """A create went through: clear the strikes and raise the factor by `step` (once per second)."""

    def state(self, key: str, now: float) -> CooldownState:
        """The scope's pause and factor at `now`."""

    def cut_slots(self, key: str, now: float, *, cap: int) -> None:
        """A create was refused for concurrency: the scope holds at most `cap` slots from now (then grows back)."""


def _check_stretch(stretch: float) -> None:
    if not 1.0 <= stretch < 1.5:
        raise ValueError(f"stretch must be in [1, 1.5), got {stretch}")


class RedisCooldowns:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._trip = client.register_script(_TRIP)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._cut_slots = client.register_script(_CUT_SLOTS)

    def trip(self, key: str, now: float, *, base_s: float, cap_s: float, stretch: float) -> CooldownState:
        _check_stretch(stretch)
        until, factor = self._trip(
            keys=[key],
            args=[repr(now), repr(base_s), repr(cap_s), repr(stretch), repr(FACTOR_FLOOR), repr(DECREASE), TTL_S],
        )
        return CooldownState(max(0.0, float(until) - now), float(factor))

    def succeeded(self, key: str, now: float, *, step: float) -> float:
        return float(self._succeeded(keys=[key], args=[repr(now), repr(step), TTL_S]))

    def state(self, key: str, now: float) -> CooldownState:
        fields = ["until", "factor", "slot_cap", "cap_at"]
        until, factor, cap, cap_at = cast(list[str | None], self._redis.hmget(key, fields))
        return CooldownState(
            max(0.0, float(until or 0) - now), float(factor or 1), int(cap) if cap else None, float(cap_at or 0)
        )

    def cut_slots(self, key: str, now: float, *, cap: int) -> None:
        self._cut_slots(keys=[key], args=[repr(now), max(1, cap), TTL_S])


@dataclass
class _Scope:
    until: float = 0.0
    factor: float = 1.0
    strikes: int = 0
    cut_at: float = float("-inf")
    raised_at: float = float("-inf")
    slot_cap: int | None = None
    cap_at: float = 0.0


class MemoryCooldowns:
    def __init__(self) -> None:
        self._scopes: dict[str, _Scope] = {}
        self._lock = threading.Lock()

    def trip(self, key: str, now: float, *, base_s: float, cap_s: float, stretch: float) -> CooldownState:
        _check_stretch(stretch)
        with self._lock:
            s = self._scopes.setdefault(key, _Scope())
            s.until = max(s.until, now + min(cap_s, base_s * 2**s.strikes) * stretch)
            if now - s.cut_at >= 1:
                s.factor = max(FACTOR_FLOOR, s.factor * DECREASE)
                s.cut_at = now
                s.strikes += 1
            return CooldownState(max(0.0, s.until - now), s.factor)

    def succeeded(self, key: str, now: float, *, step: float) -> float:
        with self._lock:
            s = self._scopes.get(key)
            if s is None:
                return 1.0
            if now >= s.until and now - s.raised_at >= 1:
                s.factor, s.strikes, s.raised_at = min(1.0, s.factor + step), 0, now
            return s.factor

    def state(self, key: str, now: float) -> CooldownState:
        with self._lock:
            s = self._scopes.get(key, _Scope())
            return CooldownState(max(0.0, s.until - now), s.factor, s.slot_cap, s.cap_at)

    def cut_slots(self, key: str, now: float, *, cap: int) -> None:
        with self._lock:
            s = self._scopes.setdefault(key, _Scope())
            s.slot_cap, s.cap_at = max(1, cap), now
