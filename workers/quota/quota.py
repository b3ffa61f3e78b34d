"""The quota as the stages see it: may this create go, may this query go, who holds a slot.

`Quota` puts the four mechanisms together with the settings' knobs. Every "not now" is a wait in seconds
(a value, never an exception): the stage reschedules itself with it and burns no retry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from config.accounts import AccountSettings, ScopeLimits
from config.catalogue import Catalogue
from config.settings import Settings
from workers.jobstore import keys
from workers.quota.budget import QueryBudget
from workers.quota.cooldown import Cooldowns, CooldownState, MemoryCooldowns, RedisCooldowns
from workers.quota.rate import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from workers.quota.slots import MemorySlots, RedisSlots, Slots
from workers.quota.spend import MemorySpend, RedisSpend, Spend

#: A poll whose slot lease lapsed takes it back whatever the limit: its task holds an upstream slot anyway.
UNBOUNDED = 1_000_000


@dataclass(frozen=True)
class Scope:
    """Where a job's upstream task counts: one account's limits for one model."""

    account: str
    model: str

    @property
    def slots_key(self) -> str:
        return keys.slots(self.account, self.model)

    def __str__(self) -> str:
        return f"{self.account}/{self.model}"


def scopes_of(account: AccountSettings, catalogue: Catalogue) -> list[Scope]:
    """Every scope of the account: one per catalogue model it serves."""
    return [Scope(account.name, model) for model in catalogue if account.serves(model)]


@dataclass
class Quota:
    rate: RateLimiter
    slots: Slots
    cooldowns: Cooldowns
    budget: QueryBudget
    spend: Spend

    @classmethod
    def redis(cls, client: redis.Redis) -> Quota:
        """The fleet-wide quota, in the Redis every worker shares."""
        limiter = RedisRateLimiter(client)
        return cls(limiter, RedisSlots(client), RedisCooldowns(client), QueryBudget(limiter), RedisSpend(client))

    @classmethod
    def memory(cls) -> Quota:
        """A one-process quota (tests; a single-process embedding)."""
        limiter = MemoryRateLimiter()
        return cls(limiter, MemorySlots(), MemoryCooldowns(), QueryBudget(limiter), MemorySpend())

    # --- submit rate and cooldown ------------------------------------------------------------------
    def cooldown(self, scope: Scope, now: float) -> CooldownState:
        """The scope's 429 pause (if any) and the factor on its submit rate, as every worker sees them."""
        return self.cooldowns.state(keys.cooldown(scope.account, scope.model), now)

    def submit_wait_s(
        self, scope: Scope, limits: ScopeLimits, settings: Settings, now: float, rng: random.Random
    ) -> float:
        """0.0 when a create of `scope` may go now; else how long to wait (jittered, never zero)."""
        cooldown_key = keys.cooldown(scope.account, scope.model)
        state = self.cooldowns.state(cooldown_key, now)
        if state.wait_s > 0:
            return state.wait_s + rng.uniform(0.05, 0.25)
        rate = limits.submit_rate_per_s * settings.submit_rate_safety * state.factor
        wait = self.rate.take(keys.submit_rate(scope.account, scope.model), rate, now)
        # Denied creates would all come back on the same instant: spread them over a fifth of an interval.
        return wait + rng.uniform(0.01, 0.2 / rate) if wait > 0 else 0.0

    def throttled(
        self, scope: Scope, settings: Settings, now: float, rng: random.Random, retry_after_s: float | None = None
    ) -> float:
        """A create of `scope` got a 429: pause the scope for everyone; return this job's wait."""
        state = self.cooldowns.trip(
            keys.cooldown(scope.account, scope.model),
            now,
            base_s=max(settings.throttle_cooldown_s, retry_after_s or 0.0),
            cap_s=settings.throttle_cooldown_cap_s,
            stretch=rng.uniform(1.0, 1.5),
        )
        return state.wait_s + rng.uniform(0.05, 0.25)

    def created(self, scope: Scope, settings: Settings, now: float) -> None:
        """A create of `scope` went through: let a throttled rate grow back."""
        self.cooldowns.succeeded(keys.cooldown(scope.account, scope.model), now, step=settings.rate_increase_step)

    # --- slot count (throttle mode) ------------------------------------------------------------------
    def slot_limit(self, scope: Scope, configured: int, probe_s: float, now: float) -> int:
        """How many jobs of `scope` may hold a slot now: `configured`, or less after 429s for concurrency (growing
        back by one per `probe_s`)."""
        state = self.cooldowns.state(keys.cooldown(scope.account, scope.model), now)
        return state.slots(configured, now, probe_s)

    def concurrency_refused(self, scope: Scope, limits: ScopeLimits, upstream: int, probe_s: float, now: float) -> int:
        """A create of `scope`, on an account with no queue upstream, got a 429 that may say "too many tasks at
        once", while `upstream` other tasks of it were upstream or being created. Multiplicative decrease: the slot
        count is halved, at most once a second (the 429s of creates already in flight say the same thing once),
        but never below `upstream` (a 429 for concurrency means the service runs at least its limit, and genq's
        count only adds tasks that ended unnoticed, so the cut never goes below the real limit; a rate 429 costs
        a halving at most). Returns the slot count now in force."""
        state = self.cooldowns.state(keys.cooldown(scope.account, scope.model), now)
        current = state.slots(limits.slot_limit, now, probe_s)
        if state.slot_cap is not None and now - state.cap_at < 1.0:
            return current
        cap = max(1, upstream, math.ceil(current / 2))
        if cap < current:
            self.cooldowns.cut_slots(keys.cooldown(scope.account, scope.model), now, cap=cap)
        return min(cap, current)

    # --- query budget ------------------------------------------------------------------------------
    def query_wait_s(self, account: str, qps: float, now: float, rng: random.Random) -> float:
        wait = self.budget.take(account, qps, now)
        return wait + rng.uniform(0.01, 0.1) if wait > 0 else 0.0

    def list_wait_s(self, account: str, qps: float, now: float, rng: random.Random) -> float:
        """`query_wait_s` for a page of the task list, on the lists' share of the budget."""
        wait = self.budget.take_list(account, qps, now)
        return wait + rng.uniform(0.005, 0.02) if wait > 0 else 0.0

    # --- slots -------------------------------------------------------------------------------------
    def take_slot(self, scope: Scope, ref: str, *, limit: int, lease_s: float, now: float) -> bool:
        return self.slots.acquire(scope.slots_key, ref, limit=limit, lease_until=now + lease_s, now=now)

    def keep_slot(self, scope: Scope, ref: str, *, lease_s: float, now: float) -> None:
        """Renew the job's lease; a job that lost its slot (a long outage) takes it back: its task is upstream."""
        if not self.slots.renew(scope.slots_key, ref, lease_until=now + lease_s):
            self.slots.acquire(scope.slots_key, ref, limit=UNBOUNDED, lease_until=now + lease_s, now=now)

    def release_slot(self, scope: Scope, ref: str) -> bool:
        return self.slots.release(scope.slots_key, ref)

    def slot_holders(self, scope: Scope, now: float) -> list[str]:
        return self.slots.holders(scope.slots_key, now)

    def slots_held(self, scopes: Sequence[Scope], now: float) -> dict[Scope, int]:
        """How many jobs hold a slot of each scope (leases running at `now`), read at once: the metrics' view."""
        return dict(zip(scopes, self.slots.held([s.slots_key for s in scopes], now), strict=True))
