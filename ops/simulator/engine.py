"""The simulated service's state: accounts, tasks, limits, the timing model, and the counters.

Time is real wall-clock time; only durations are scaled. Each (account, model) scope has `concurrency`
slots. Tasks wait in FIFO order in PENDING until a slot is free, run for a duration drawn from the
profile, then end. The schedule is advanced lazily to "now" whenever anything looks at the scope, so the
simulator needs no background thread and its answers are exact for any query time.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ops.simulator.models import SimModel


@dataclass(frozen=True)
class Profile:
    image_s: tuple[float, float]
    video_s: tuple[float, float]
    prompt_extend_s: float = 3.5


PROFILES = {
    # Durations as documented: images 10 s to 2 min (typically 1-2 min), videos 1-5 min.
    "realistic": Profile(image_s=(10.0, 120.0), video_s=(60.0, 300.0)),
    # Short enough for a person watching a demo batch, long enough to show queueing.
    "demo": Profile(image_s=(2.0, 6.0), video_s=(5.0, 10.0), prompt_extend_s=1.0),
    # For tests: sub-second generations.
    "fast": Profile(image_s=(0.3, 1.0), video_s=(0.5, 1.5), prompt_extend_s=0.1),
}


@dataclass
class SimConfig:
    profile: str = "demo"
    time_scale: float = 1.0  # multiplies every duration
    keys: dict[str, str] = field(default_factory=dict)  # api key -> account
    concurrency_mode: str = "queue"  # "queue": excess waits in PENDING; "throttle": excess gets 429
    query_qps: int = 20
    retention_s: float = 24 * 3600.0  # tasks and URLs are forgotten after this (scaled)
    url_life_s: float = 24 * 3600.0
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (submit/s, concurrency)
    seed: int | None = None


@dataclass
class SimTask:
    task_id: str
    account: str
    key: str
    model: SimModel
    created: float
    duration_s: float
    body: dict[str, Any]
    n: int
    size: str
    prompt: str
    actual_prompt: str | None
    scheduled: float | None = None
    end: float | None = None
    canceled_at: float | None = None

    def status(self, now: float) -> str:
        if self.canceled_at is not None:
            return "CANCELED"
        if self.scheduled is None or self.scheduled > now:
            return "PENDING"
        if self.end is not None and self.end > now:
            return "RUNNING"
        return "SUCCEEDED"


@dataclass
class Scope:
    model: SimModel
    submit_per_s: int
    concurrency: int
    pending: deque[SimTask] = field(default_factory=deque)
    slot_free_at: list[float] = field(default_factory=list)  # heap, one entry per slot
    creates: deque[float] = field(default_factory=deque)  # create times within the last second
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of every run
    max_running: int = 0

    def __post_init__(self) -> None:
        self.slot_free_at = [0.0] * self.concurrency

    def advance(self, now: float) -> None:
        """Start, in FIFO order, every pending task whose slot came free by `now`."""
        while self.pending:
            task = self.pending[0]
            if task.canceled_at is not None:
                self.pending.popleft()
                continue
            start = max(task.created, self.slot_free_at[0])
            if start > now:
                return
            self.pending.popleft()
            heapq.heapreplace(self.slot_free_at, start + task.duration_s)
            task.scheduled, task.end = start, start + task.duration_s
            self.intervals.append((start, task.end))
            running = sum(1 for free_at in self.slot_free_at if free_at > start)
            self.max_running = max(self.max_running, running)

    def unfinished(self, now: float) -> int:
        return len(self.pending) + sum(1 for free_at in self.slot_free_at if free_at > now)


class Engine:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.reset()

    def reset(self) -> None:
        self.tasks: dict[str, SimTask] = {}
        self.scopes: dict[tuple[str, str], Scope] = {}
        self.queries: dict[str, deque[float]] = {}
        self.counters: Counter[str] = Counter()
        self.creates_by_key_model: Counter[tuple[str, str]] = Counter()
        self.create_fingerprints: Counter[tuple[str, str]] = Counter()
        self.started_at = time.time()

    # --- lookups --------------------------------------------------------------------------------
    def account_of(self, key: str) -> str | None:
        return self.config.keys.get(key)

    def scope(self, account: str, model: SimModel) -> Scope:
        found = self.scopes.get((account, model.name))
        if found is None:
            rate, slots = self.config.limits.get(model.name, (model.submit_per_s, model.concurrency))
            found = self.scopes[(account, model.name)] = Scope(model, rate, slots)
        return found

    def duration_s(self, model: SimModel, prompt_extend: bool) -> float:
        profile = PROFILES[self.config.profile]
        low, high = profile.video_s if model.video else profile.image_s
        seconds = self.rng.uniform(low, high) + (profile.prompt_extend_s if prompt_extend else 0.0)
        return seconds * self.config.time_scale

    # --- limits ---------------------------------------------------------------------------------
    def take_submit(self, scope: Scope, now: float) -> bool:
        """True when a create fits the scope's submit rate (a sliding one-second window)."""
        while scope.creates and scope.creates[0] <= now - 1.0:
            scope.creates.popleft()
        if len(scope.creates) >= scope.submit_per_s:
            return False
        scope.creates.append(now)
        return True

    def take_query(self, account: str, now: float) -> bool:
        window = self.queries.setdefault(account, deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.config.query_qps:
            return False
        window.append(now)
        return True

    # --- tasks ----------------------------------------------------------------------------------
    def create(
        self,
        *,
        key: str,
        account: str,
        model: SimModel,
        body: dict[str, Any],
        prompt: str,
        n: int,
        size: str,
        prompt_extend: bool,
        now: float,
    ) -> SimTask:
        actual = f"{prompt}. Highly detailed, soft natural light, balanced composition." if prompt_extend else None
        task = SimTask(
            task_id=str(uuid.uuid4()),
            account=account,
            key=key,
            model=model,
            created=now,
            duration_s=self.duration_s(model, prompt_extend),
            body=body,
            n=n,
            size=size,
            prompt=prompt,
            actual_prompt=actual,
        )
        self.tasks[task.task_id] = task
        scope = self.scope(account, model)
        scope.pending.append(task)
        scope.advance(now)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        self.create_fingerprints[(account, fingerprint)] += 1
        self.creates_by_key_model[(key, model.name)] += 1
        self.counters["creates"] += 1
        return task

    def find(self, task_id: str, account: str, now: float) -> SimTask | None:
        """The task as of `now`, or None when unknown to this account or past retention."""
        task = self.tasks.get(task_id)
        if task is None or task.account != account:
            return None
        if now - task.created > self.config.retention_s * self.config.time_scale:
            return None
        self.scope(account, task.model).advance(now)
        return task

    def cancel(self, task: SimTask, now: float) -> bool:
        if task.status(now) != "PENDING":
            return False
        task.canceled_at = now
        self.counters["cancels"] += 1
        return True

    # --- what the admin endpoint reports --------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        for scope in self.scopes.values():
            scope.advance(now)
        duplicates = sum(count - 1 for count in self.create_fingerprints.values() if count > 1)
        return {
            "now": now,
            "counters": dict(self.counters),
            "creates_by_key_model": [
                {"key_suffix": key[-4:], "model": model, "creates": count}
                for (key, model), count in sorted(self.creates_by_key_model.items())
            ],
            "duplicate_creates": duplicates,
            "scopes": [
                {
                    "account": account,
                    "model": model,
                    "submit_per_s": s.submit_per_s,
                    "concurrency": s.concurrency,
                    "max_running": s.max_running,
                    "pending": len(s.pending),
                    "running": sum(1 for t in s.slot_free_at if t > now),
                    "intervals": s.intervals,
                }
                for (account, model), s in sorted(self.scopes.items())
            ],
        }
