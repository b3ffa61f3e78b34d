"""The job store in Redis: jobs, batches, the due index, and every change of status by compare-and-set.

Celery messages are triggers; this store is the truth. Each change goes through one Lua script
(`store_lua.TRANSITION`) that checks the job's `attempt` and current status, applies the change, keeps the
batch counters, and appends the job's CloudEvent when it turns terminal: all in one atomic step, so a job
emits exactly one terminal event however often its messages are delivered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from workers import metrics, refs
from workers.events import iso_time
from workers.job import TERMINAL, Action, Job, Status, allowed_sources
from workers.jobstore import keys
from workers.jobstore import lua as store_lua


def _flatten(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif value is None:
            value = ""
        out += [name, str(value)]
    return out


@dataclass(frozen=True)
class NewJob:
    """A job to create: its ref, source line, model (its wait queue) and record fields."""

    ref: str
    line: int
    model: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Applied:
    """The outcome of a transition: `ok` when this caller's change took effect."""

    ok: bool
    status: str
    attempt: int
    batch_finished: bool = False
    reason: str = ""


@dataclass
class BatchSummary:
    batch_id: str
    total: int = 0
    terminal: int = 0
    rejected: int = 0
    sealed: bool = False
    done_at: float | None = None
    created_at: float | None = None
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.sealed and self.terminal >= self.total

    @property
    def succeeded(self) -> int:
        return self.counts.get(Status.SUCCEEDED, 0) + self.counts.get(Status.PARTIALLY_SUCCEEDED, 0)


class JobStore:
    def __init__(
        self, client: redis.Redis, *, event_stream: str = "genq:events", event_stream_maxlen: int = 100_000
    ) -> None:
        self.redis = client
        self.event_stream = event_stream
        self.event_stream_maxlen = event_stream_maxlen
        self._create = client.register_script(store_lua.CREATE_JOB)
        self._transition = client.register_script(store_lua.TRANSITION)
        self._seal = client.register_script(store_lua.SEAL_BATCH)
        self._revive = client.register_script(store_lua.REVIVE)
        self._requeue = client.register_script(store_lua.REQUEUE)
        self._advance_clock = client.register_script(store_lua.ADVANCE_CLOCK)
        self._count_crash = client.register_script(store_lua.COUNT_CRASH)
        self._pause_account = client.register_script(store_lua.PAUSE_ACCOUNT)

    # --- batches --------------------------------------------------------------------------------
    def open_batch(self, batch_id: str, *, source: str, priority: int = 5, now: float | None = None) -> bool:
        """Create the batch or reopen it for more jobs, with its admission priority (0-9, 9 first).
        True when it is new."""
        if not 0 <= priority <= 9:
            raise ValueError(f"priority must be 0-9, got {priority}")
        now = time.time() if now is None else now
        key = keys.batch(batch_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "created_at", now)
        pipe.hset(key, mapping={"sealed": "0", "source": source, "priority": priority})
        pipe.zadd(keys.BATCHES, {batch_id: now}, nx=True)
        created = pipe.execute()[0]
        return bool(created)

    def seal_batch(self, batch_id: str, *, now: float | None = None) -> bool:
        """No more jobs will be added. True when this finished the batch (every job already terminal)."""
        now = time.time() if now is None else now
        finished = self._seal(
            keys=[keys.batch(batch_id), self.event_stream],
            args=[batch_id, now, iso_time(now), self.event_stream_maxlen],
        )
        return bool(finished)

    def record_rejected(self, batch_id: str, line: int, field_name: str, reason: str, raw: Mapping[str, Any]) -> None:
        """Record a rejected input line (idempotent per line), with the field and the rule it broke."""
        record = {"line": line, "field": field_name, "reason": reason, "input": dict(raw)}
        pipe = self.redis.pipeline()
        pipe.hset(keys.batch_rejected(batch_id), str(line), json.dumps(record, ensure_ascii=False))
        pipe.hlen(keys.batch_rejected(batch_id))
        count = pipe.execute()[1]
        self.redis.hset(keys.batch(batch_id), "rejected", count)

    def rejected(self, batch_id: str) -> list[dict[str, Any]]:
        records = [json.loads(v) for v in self.redis.hvals(keys.batch_rejected(batch_id))]
        return sorted(records, key=lambda r: int(r["line"]))

    def batch_summary(self, batch_id: str) -> BatchSummary | None:
        h = self._hash(keys.batch(batch_id))
        if not h:
            return None
        return BatchSummary(
            batch_id=batch_id,
            total=int(h.get("total", 0)),
            terminal=int(h.get("terminal", 0)),
            rejected=int(h.get("rejected", 0)),
            sealed=h.get("sealed") == "1",
            done_at=float(h["done_at"]) if h.get("done_at") else None,
            created_at=float(h["created_at"]) if h.get("created_at") else None,
            source=h.get("source", ""),
            counts={k[2:]: int(v) for k, v in h.items() if k.startswith("n:") and int(v)},
        )

    def batch_ids(self) -> list[str]:
        return cast(list[str], self.redis.zrange(keys.BATCHES, 0, -1))

    # --- jobs -----------------------------------------------------------------------------------
    def create_job(self, ref: str, *, line: int, model: str, fields: Mapping[str, Any]) -> Status | None:
        """Create the job, waiting in its model's queue, unless it exists. None when created; else the existing
        job's status."""
        return self.create_jobs([NewJob(ref, line, model, fields)])[0]

    def create_jobs(self, jobs: list[NewJob]) -> list[Status | None]:
        """`create_job` for many jobs in one round trip (each still one atomic step), in order."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            batch_id, job_id = refs.split_ref(job.ref)
            self._create(
                keys=[
                    keys.job(job.ref),
                    keys.batch(batch_id),
                    keys.batch_jobs(batch_id),
                    keys.BATCHES,
                    keys.COUNTS,
                    keys.wait_queue(job.model),
                    keys.wait_clock(job.model),
                ],
                args=[job.ref, job_id, job.line, time.time(), job.model, *_flatten(job.fields)],
                client=pipe,
            )
        return [Status(existing) if existing else None for existing in pipe.execute()]

    # --- the wait queues of admission -----------------------------------------------------------
    def next_waiting(self, model: str) -> tuple[str, float] | None:
        """The job first in line for a slot of `model`, with its score; None when nobody waits."""
        found = cast(list[tuple[str, float]], self.redis.zrange(keys.wait_queue(model), 0, 0, withscores=True))
        return found[0] if found else None

    def leave_queue(self, model: str, ref: str) -> bool:
        return bool(self.redis.zrem(keys.wait_queue(model), ref))

    def requeue(self, ref: str, model: str) -> bool:
        """Put an accepted job back in line (at its band's current turn); False when it already was."""
        batch_id = refs.split_ref(ref)[0]
        return bool(
            self._requeue(keys=[keys.batch(batch_id), keys.wait_queue(model), keys.wait_clock(model)], args=[ref])
        )

    def advance_clock(self, model: str, score: float) -> None:
        self._advance_clock(keys=[keys.wait_clock(model)], args=[repr(score % 1e12)])

    def waiting(self, models: list[str]) -> dict[str, int]:
        """How many jobs wait for a slot, per model (only the models with any)."""
        pipe = self.redis.pipeline()
        for model in models:
            pipe.zcard(keys.wait_queue(model))
        return {m: int(n) for m, n in zip(models, pipe.execute(), strict=True) if n}

    def get(self, ref: str) -> Job | None:
        h = self._hash(keys.job(ref))
        return Job.from_hash(ref, h) if h else None

    def jobs(self, batch_id: str, chunk: int = 500) -> Iterator[Job]:
        """Every job of the batch, in source order, read in pipelined chunks."""
        start = 0
        while True:
            ids = cast(list[str], self.redis.zrange(keys.batch_jobs(batch_id), start, start + chunk - 1))
            if not ids:
                return
            pipe = self.redis.pipeline()
            for job_id in ids:
                pipe.hgetall(keys.job(refs.job_ref(batch_id, job_id)))
            for job_id, h in zip(ids, pipe.execute(), strict=True):
                if h:
                    yield Job.from_hash(refs.job_ref(batch_id, job_id), h)
            start += chunk

    def sample_jobs(self, batch_id: str, count: int) -> list[Job]:
        """Up to `count` jobs of the batch, drawn at random (one round trip, whatever the batch's size)."""
        job_ids = cast(list[str], self.redis.zrandmember(keys.batch_jobs(batch_id), count) or [])
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(refs.job_ref(batch_id, job_id)))
        return [
            Job.from_hash(refs.job_ref(batch_id, job_id), h)
            for job_id, h in zip(job_ids, pipe.execute(), strict=True)
            if h
        ]

    def transition(
        self,
        ref: str,
        target: Status,
        *,
        expected_attempt: int | None,
        bump_attempt: bool = False,
        next_action: Action = Action.NONE,
        due_at: float | None = None,
        fields: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> Applied:
        """Move the job to `target` if its attempt is still `expected_attempt` and the move is allowed.

        `bump_attempt` claims the job: later messages carrying the old attempt find it moved on.
        A terminal target removes it from the due index; any other schedules `next_action` at `due_at`.
        """
        now = time.time() if now is None else now
        terminal = target in TERMINAL
        all_fields = {"next_action": Action.NONE if terminal else next_action, **(fields or {})}
        sources = " ".join(sorted(allowed_sources(target)))
        code, status, attempt, finished, previous = cast(
            list[Any],
            self._transition(
                keys=[
                    keys.job(ref),
                    keys.batch(refs.split_ref(ref)[0]),
                    keys.DUE,
                    self.event_stream,
                    keys.COUNTS,
                    keys.INFLIGHT,
                ],
                args=[
                    ref,
                    "" if expected_attempt is None else expected_attempt,
                    1 if bump_attempt else 0,
                    target.value,
                    sources,
                    1 if terminal else 0,
                    now,
                    iso_time(now),
                    "" if terminal or due_at is None else due_at,
                    json.dumps(event, ensure_ascii=False) if event else "",
                    self.event_stream_maxlen,
                    refs.split_ref(ref)[0],
                    *_flatten(all_fields),
                ],
            ),
        )
        reason = {0: "attempt moved on", -1: "no such job", -2: f"{status} cannot move to {target}"}.get(code, "")
        if code == 1 and previous != status:
            metrics.JOB_STATUS.labels(status=status).inc()
        return Applied(ok=code == 1, status=status, attempt=int(attempt), batch_finished=bool(finished), reason=reason)

    def revive(self, ref: str, *, allowed: frozenset[Status], now: float | None = None) -> bool:
        """Move an ended job whose status is in `allowed` back to `accepted` for another try."""
        now = time.time() if now is None else now
        batch_id = refs.split_ref(ref)[0]
        revived = self._revive(
            keys=[keys.job(ref), keys.batch(batch_id), keys.DUE, keys.COUNTS],
            args=[ref, now, " ".join(sorted(allowed))],
        )
        return bool(revived)

    def pause_account(self, account: str, record: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """Pause `account` and append its event atomically; False (and no event) when it already was paused."""
        paused = self._pause_account(
            keys=[keys.PAUSED, self.event_stream],
            args=[account, json.dumps(record), json.dumps(event, ensure_ascii=False), self.event_stream_maxlen],
        )
        return bool(paused)

    # --- creates in flight and task owners (reconcile.py) ---------------------------------------------
    def begin_create(self, account: str, model: str, ref: str, sent_at: float) -> None:
        """Record, before it is sent, that the job's create is on its way: until its answer has recorded the
        task's owner, no reconciliation of the scope may adopt a task it could have made."""
        pipe = self.redis.pipeline()
        pipe.zadd(keys.creating(account, model), {ref: sent_at})
        # A job cancelled while its create was lost never ends its entry: an hour on, nobody waits for it.
        pipe.zremrangebyscore(keys.creating(account, model), "-inf", sent_at - 3600)
        pipe.execute()

    def lose_create(self, account: str, model: str, ref: str) -> None:
        """The job's create will get no answer (it timed out, dropped, came garbled): nobody need wait for it,
        but until its reconciliation it still stands for whatever task it may have made."""
        self.redis.sadd(keys.creating_lost(account, model), ref)

    def end_create(self, account: str, model: str, ref: str) -> None:
        """The job's create has an answer (its task's owner is recorded), or was reconciled."""
        pipe = self.redis.pipeline()
        pipe.zrem(keys.creating(account, model), ref)
        pipe.srem(keys.creating_lost(account, model), ref)
        pipe.execute()

    def creates_unresolved(self, account: str, model: str) -> list[tuple[str, float, bool]]:
        """Every create of the scope whose task is not settled yet: (job ref, when it was sent, whether its
        answer is known lost). The others may still be answered."""
        pipe = self.redis.pipeline()
        pipe.zrange(keys.creating(account, model), 0, -1, withscores=True)
        pipe.smembers(keys.creating_lost(account, model))
        found, lost = pipe.execute()
        return [(ref, float(at), ref in lost) for ref, at in found]

    def own_task(self, task_id: str, ref: str) -> bool:
        """Make the job the task's owner, unless a job already is (SET NX: an owner is never replaced). True
        when the job owns it now, including when it already did."""
        owner_key = keys.task_owner(task_id)
        if self.redis.set(owner_key, ref, nx=True, ex=keys.TASK_OWNER_TTL_S):
            return True
        return self.redis.get(owner_key) == ref

    def task_owner(self, task_id: str) -> str | None:
        return cast(str | None, self.redis.get(keys.task_owner(task_id)))

    def count_crash(self, ref: str) -> int:
        """Count an unexpected exception of one of the job's stages; the count so far (0: no such job)."""
        return int(cast(int, self._count_crash(keys=[keys.job(ref)], args=[])))

    def due(self, now: float, limit: int = 1000) -> list[tuple[str, float]]:
        """Refs whose next action was due at or before `now`, oldest first (for the recovery sweep)."""
        found = self.redis.zrangebyscore(keys.DUE, "-inf", now, start=0, num=limit, withscores=True)
        return cast(list[tuple[str, float]], found)

    def _hash(self, key: str) -> dict[str, str]:
        # The client is built with decode_responses=True, so replies are str (redis-py types them loosely).
        return cast(dict[str, str], self.redis.hgetall(key))
