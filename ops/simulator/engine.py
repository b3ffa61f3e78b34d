"""The simulated service's state: accounts, tasks, limits, the timing model, faults and counters.

Time is real wall-clock time; only durations are scaled. Each (account, model) scope has `concurrency`
slots. Tasks wait in FIFO order in PENDING until a slot is free, run for a duration drawn from the profile,
then end with the outcome decided when they were created. The schedule is advanced lazily to "now"
whenever anything looks at the scope, so there is no background thread and every answer is exact.
"""

from __future__ import annotations

import builtins
import hashlib
import heapq
import json
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.simulator.faults import FaultPlan
from ops.simulator.models import SimModel
from ops.simulator.profiles import PROFILES, Profile, check_concurrency_mode, check_limits
from ops.simulator.query_budget import QueryBudget, QueryKind

TIMEOUT_MESSAGE = (
    "An internal timeout error has occurred during execution, please try again later or contact service support."
)
#: (code, message) of the documented task failures the simulator can produce.
FAILURES = {
    "task_failed": ("InternalError.Algo", "An internal error occurred in the algorithm."),
    "task_timeout": ("InternalError.Timeout", TIMEOUT_MESSAGE),
    "task_inspection": ("DataInspectionFailed", "Output data may contain inappropriate content."),
    "task_ip_infringement": ("IPInfringementSuspect", "Output data is suspected of being involved in IP infringement."),
    "task_invalid_parameter": ("InvalidParameter", "The task's parameters could not be processed by the model."),
}


#: Queries of a `task_unknown_flap` task that answer UNKNOWN before the truth.
UNKNOWN_FLAP_ANSWERS = 2
#: How many times its drawn duration a `task_long` task runs.
LONG_TASK_FACTOR = 10.0


@dataclass
class SimConfig:
    profile: Profile = field(default_factory=lambda: PROFILES["demo"])
    keys: dict[str, str] = field(default_factory=dict)  # api key -> account
    time_scale: float | None = None  # overrides the profile's
    query_qps: int = 20
    retention_s: float = 24 * 3600.0  # tasks are forgotten (UNKNOWN) after this, scaled
    url_life_s: float = 24 * 3600.0  # result URLs expire after this, scaled
    slow_response_s: float = 40.0  # how late a "slow" answer comes (absolute, not scaled)
    video_bytes: int = 0  # size of generated MP4s; 0 = small
    seed: int | None = None

    @property
    def scale(self) -> float:
        return self.profile.time_scale if self.time_scale is None else self.time_scale


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
    prompt: str  # as kept: truncated to the model's limit
    actual_prompt: str | None
    negative_prompt: str = ""  # as kept: truncated to 500 characters
    seed: int | None = None  # as sent
    sync: bool = False  # came through the sync endpoint
    failure: tuple[str, str] | None = None  # the whole task fails with (code, message)
    failed_indices: frozenset[int] = frozenset()  # partial failure: these sub-images fail
    expire_on_end: bool = False
    unknown_answers_left: int = 0  # the `task_unknown_flap` fault: queries that answer UNKNOWN first
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
        return "FAILED" if self.failure else "SUCCEEDED"


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
    sync_in_flight: int = 0  # sync calls accepted and not yet answered: what the client holds open
    sync_in_flight_max: int = 0

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
        #: What "now" is for every request. Tests that check a one-second window freeze it, so a loaded machine
        #: cannot spread their requests over two windows.
        self.clock: Callable[[], float] = time.time
        self.reset()

    def reset(self) -> None:
        self.tasks: dict[str, SimTask] = {}
        self.scopes: dict[tuple[str, str], Scope] = {}
        self.query_budgets: dict[str, QueryBudget] = {}
        self.counters: Counter[str] = Counter()
        self.creates_by_key_model: Counter[tuple[str, str]] = Counter()
        self.create_fingerprints: Counter[tuple[str, str]] = Counter()
        self.downloaded_urls: set[str] = set()
        self.served_sha256: dict[str, str] = {}  # "task_id/index" -> sha256 of the bytes served in full
        # Sync calls in flight, by task id. A call still open across a reset ends without touching the new figures.
        self.sync_open: dict[str, Scope] = {}
        self.sync_in_flight_max = 0
        self.faults = FaultPlan(self.config.profile.faults, self.rng)
        self.started_at = self.clock()

    def configure(
        self,
        *,
        faults: dict[str, object] | None = None,
        limits: dict[str, Any] | None = None,
        concurrency_mode: str | None = None,
        burst_protection: bool | None = None,
    ) -> None:
        """Change faults or limits at run time (the admin endpoint). New limits apply to new scopes and to
        the submit rate of existing ones; the slots of a running scope keep their count."""
        profile = self.config.profile
        new_limits = {**profile.limits, **check_limits(limits or {})}  # checked before anything changes
        mode = check_concurrency_mode(concurrency_mode or profile.concurrency_mode)
        if burst_protection is not None and not isinstance(burst_protection, bool):
            raise ValueError(f"burst_protection must be true or false, got {burst_protection!r}")
        if faults is not None:
            self.faults.update(faults)  # what fired so far stays counted
        self.config.profile = Profile(
            profile.name,
            profile.timing,
            new_limits,
            self.faults.probabilities,
            mode,
            profile.burst_protection if burst_protection is None else burst_protection,
            profile.time_scale,
        )
        for (_, model), scope in self.scopes.items():
            if model in new_limits:
                scope.submit_per_s = new_limits[model][0]

    # --- lookups --------------------------------------------------------------------------------
    def account_of(self, key: str) -> str | None:
        return self.config.keys.get(key)

    def scope(self, account: str, model: SimModel) -> Scope:
        found = self.scopes.get((account, model.name))
        if found is None:
            rate, slots = self.config.profile.limits.get(model.name, (model.submit_per_s, model.concurrency))
            found = self.scopes[(account, model.name)] = Scope(model, rate, slots)
        return found

    def duration_s(self, model: SimModel, prompt_extend: bool) -> float:
        timing = self.config.profile.timing
        low, high = timing.video_s if model.video else timing.image_s
        if timing.distribution == "lognormal" and low > 0:
            # Median at the geometric mean of the bounds, which lie 2 sigma either side of it (profiles.py tells how
            # to ask for a median and a sigma); about 95 % of draws fall inside them, the rest are clipped.
            median, sigma = math.sqrt(low * high), max(1e-9, math.log(high / low) / 4)
            seconds = min(high, max(low, self.rng.lognormvariate(math.log(median), sigma)))
        else:
            seconds = self.rng.uniform(low, high)
        seconds += timing.prompt_extend_s if prompt_extend else 0.0
        return seconds * self.config.scale

    # --- limits ---------------------------------------------------------------------------------
    def take_submit(self, scope: Scope, now: float) -> str | None:
        """None when a create fits the scope's submit rate (a sliding one-second window); else the 429 code."""
        while scope.creates and scope.creates[0] <= now - 1.0:
            scope.creates.popleft()
        if len(scope.creates) >= scope.submit_per_s:
            return "Throttling.RateQuota"
        recent = sum(1 for t in scope.creates if t > now - 0.2)
        if self.config.profile.burst_protection and recent >= max(1, scope.submit_per_s // 2):
            return "Throttling.BurstRate"  # "Request rate increased too quickly"
        scope.creates.append(now)
        return None

    def take_query(self, account: str, now: float, kind: QueryKind) -> bool:
        """Whether a task query or a list fits the account's query budget (both count against it)."""
        budget = self.query_budgets.get(account)
        if budget is None:
            budget = self.query_budgets[account] = QueryBudget(self.config.query_qps)
        budget.per_s = self.config.query_qps  # the configuration may change while the simulator runs
        return budget.take(now, kind)

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
        negative_prompt: str = "",
        seed: int | None = None,
        sync: bool = False,
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
            negative_prompt=negative_prompt,
            seed=seed,
            sync=sync,
        )
        self._decide_outcome(task)
        self.tasks[task.task_id] = task
        scope = self.scope(account, model)
        scope.pending.append(task)
        scope.advance(now)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        self.create_fingerprints[(account, fingerprint)] += 1
        self.creates_by_key_model[(key, model.name)] += 1
        self.counters["creates"] += 1
        return task

    def _decide_outcome(self, task: SimTask) -> None:
        for fault, failure in FAILURES.items():
            if self.faults.fires(fault, task.prompt):
                task.failure = failure
                return
        if task.n > 1 and self.faults.fires("task_partial", task.prompt):
            # The trailing sub-images fail, as in the documented example (successes listed first).
            failing = self.rng.randint(1, task.n - 1)
            task.failed_indices = frozenset(range(task.n - failing, task.n))
        task.expire_on_end = self.faults.fires("task_expire", task.prompt)
        if self.faults.fires("task_unknown_flap", task.prompt):
            task.unknown_answers_left = UNKNOWN_FLAP_ANSWERS
        if self.faults.fires("task_long", task.prompt):
            task.duration_s *= LONG_TASK_FACTOR  # not started yet: the slot it will hold is reckoned from this

    def find(self, task_id: str, account: str, now: float) -> SimTask | None:
        """The task as a query sees it at `now`, or None when unknown to this account, past retention, or
        expired early (the `task_expire` fault)."""
        task = self._retained(task_id, account, now)
        if task is not None and task.expire_on_end and task.end is not None and task.end <= now:
            return None
        return task

    def _retained(self, task_id: str, account: str, now: float) -> SimTask | None:
        """The task as of `now`, or None when unknown to this account or past retention."""
        task = self.tasks.get(task_id)
        if task is None or task.account != account:
            return None
        if now - task.created > self.config.retention_s * self.config.scale:
            return None
        self.scope(account, task.model).advance(now)
        return task

    def list(
        self, account: str, *, start: float, end: float, model: str | None, status: str | None, now: float
    ) -> list[SimTask]:
        found = []
        for task in self.tasks.values():
            if task.account != account or not start <= task.created <= end:
                continue
            if model and task.model.name != model:
                continue
            # `task_expire` stands in for a task older than the 24 h retention, as a poll would meet it; the
            # list keeps honouring the retention itself, as the real list does for a task minutes old.
            current = self._retained(task.task_id, account, now)
            if current is None or (status and current.status(now) != status):
                continue
            found.append(current)
        return sorted(found, key=lambda t: t.created, reverse=True)

    def sync_started(self, task: SimTask) -> None:
        """A sync call was accepted: in flight until `sync_ended`."""
        scope = self.scope(task.account, task.model)
        self.sync_open[task.task_id] = scope
        scope.sync_in_flight += 1
        scope.sync_in_flight_max = max(scope.sync_in_flight_max, scope.sync_in_flight)
        self.sync_in_flight_max = max(self.sync_in_flight_max, len(self.sync_open))

    def sync_ended(self, task_id: str) -> None:
        """The sync call's answer was sent, dropped, or abandoned."""
        scope = self.sync_open.pop(task_id, None)
        if scope is not None:
            scope.sync_in_flight -= 1

    def cancel(self, task: SimTask, now: float) -> bool:
        if task.status(now) != "PENDING":
            return False
        task.canceled_at = now
        self.counters["cancels"] += 1
        return True

    # --- what the admin endpoint reports --------------------------------------------------------
    def task_report(self, now: float) -> builtins.list[dict[str, Any]]:  # `list` is a method here
        """Every task ever created, as the service itself knows it (not as a client would see it: an expired
        task still shows how it ended), with the sha256 of each result served in full. For audits from outside."""
        for scope in self.scopes.values():
            scope.advance(now)
        return [
            {
                "task_id": task.task_id,
                "account": task.account,
                "model": task.model.name,
                "prompt": task.prompt,
                "negative_prompt_chars": len(task.negative_prompt),  # as kept: the service truncates at 500
                "seed": task.seed,
                "sync": task.sync,
                "n": task.n,
                "created": task.created,
                "scheduled": task.scheduled,  # the start of its run (None while it waits, or if cancelled)
                "end": task.end,
                "status": task.status(now),
                "failure_code": task.failure[0] if task.failure else None,
                "failed_indices": sorted(task.failed_indices),
                "forgotten": task.expire_on_end and task.end is not None and task.end <= now,
                "served_sha256": {
                    str(i): self.served_sha256[f"{task.task_id}/{i}"]
                    for i in range(task.n)
                    if f"{task.task_id}/{i}" in self.served_sha256
                },
            }
            for task in self.tasks.values()
        ]

    def snapshot(self, now: float) -> dict[str, Any]:
        for scope in self.scopes.values():
            scope.advance(now)
        duplicates = sum(count - 1 for count in self.create_fingerprints.values() if count > 1)
        # What the service bills: every image (or video) of a task that ended SUCCEEDED, failed sub-images aside.
        billed = sum(t.n - len(t.failed_indices) for t in self.tasks.values() if t.status(now) == "SUCCEEDED")
        return {
            "now": now,
            "profile": self.config.profile.name,
            "counters": dict(self.counters),
            "billed_images": billed,
            "faults_fired": dict(self.faults.fired),
            "creates_by_key_model": [
                {"key_suffix": key[-4:], "model": model, "creates": count}
                for (key, model), count in sorted(self.creates_by_key_model.items())
            ],
            "duplicate_creates": duplicates,
            "sync_in_flight": len(self.sync_open),
            "sync_in_flight_max": self.sync_in_flight_max,
            "accounts": [
                {"account": account, **budget.report()} for account, budget in sorted(self.query_budgets.items())
            ],
            "scopes": [
                {
                    "account": account,
                    "model": model,
                    "submit_per_s": s.submit_per_s,
                    "concurrency": s.concurrency,
                    "max_running": s.max_running,
                    "sync_in_flight": s.sync_in_flight,
                    "sync_in_flight_max": s.sync_in_flight_max,
                    "pending": len(s.pending),
                    "running": sum(1 for t in s.slot_free_at if t > now),
                    "intervals": s.intervals,
                }
                for (account, model), s in sorted(self.scopes.items())
            ],
        }
