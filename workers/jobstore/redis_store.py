"""The job store in Redis: every change one Lua script (`lua/*.lua`), atomic on the server, shared by the fleet.

Celery messages are triggers; this store is the truth. The scripts take their arguments by name (one JSON
object) and answer by name; `moves.py` plans each transition once for both stores. Keys are built by `keys.py`
alone; no module outside this package touches them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any, cast

import redis

from workers import refs
from workers.billing import utc_day
from workers.events import iso_time
from workers.job import TERMINAL, Job, Status
from workers.jobstore import keys
from workers.jobstore.moves import Move, Planned, outcome
from workers.jobstore.protocol import (
    Applied,
    BatchSummary,
    Gauges,
    NewJob,
    Purged,
    billed_scopes,
    decoded_event,
    in_line_order,
)

#: Scripts that use the shared functions of `finish_batch.lua` (prepended to them).
_WITH_SHARED = {"transition", "seal_batch", "create_job", "requeue"}


@cache
def script_source(name: str) -> str:
    """The Lua of `lua/{name}.lua`, with the shared functions in front where it uses them."""
    folder = resources.files("workers.jobstore") / "lua"
    source = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if name in _WITH_SHARED:
        source = (folder / "finish_batch.lua").read_text(encoding="utf-8") + "\n" + source
    return source


def _named(arguments: Mapping[str, Any]) -> list[str]:
    return [json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))]


class RedisJobStore(Planned):
    """`JobStore` in Redis (see `protocol.py` for what each operation promises)."""

    def __init__(
        self, client: redis.Redis, *, event_stream: str = "genq:events", event_stream_maxlen: int = 100_000
    ) -> None:
        self._redis = client
        self.event_stream = event_stream
        self.event_stream_maxlen = event_stream_maxlen
        self._scripts = {
            name: client.register_script(script_source(name))
            for name in (
                "create_job",
                "transition",
                "seal_batch",
                "requeue",
                "advance_clock",
                "count_crash",
                "pause_account",
                "push_due",
                "purge_job",
                "purge_batch",
            )
        }

    def _run(self, name: str, keys_: list[str], arguments: Mapping[str, Any] | None = None, client: Any = None) -> Any:
        return self._scripts[name](keys=keys_, args=_named(arguments) if arguments is not None else [], client=client)

    # --- batches --------------------------------------------------------------------------------
    def open_batch(self, batch_id: str, *, source: str, priority: int = 5, now: float | None = None) -> bool:
        """Create the batch or reopen it for more jobs, with its admission priority (0-9, 9 first).
        True when it is new."""
        if not 0 <= priority <= 9:
            raise ValueError(f"priority must be 0-9, got {priority}")
        now = time.time() if now is None else now
        key = keys.batch(batch_id)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "created_at", now)
        pipe.hset(key, mapping={"sealed": "0", "source": source, "priority": priority})
        pipe.zadd(keys.BATCHES, {batch_id: now}, nx=True)
        pipe.zrem(keys.BATCHES_DONE, batch_id)  # unsealed: not finished until it is sealed again
        created = pipe.execute()[0]
        return bool(created)

    def seal_batch(self, batch_id: str, *, now: float | None = None) -> bool:
        """No more jobs will be added. True when this finished the batch (every job already terminal)."""
        now = time.time() if now is None else now
        finished = self._run(
            "seal_batch",
            [keys.batch(batch_id), self.event_stream, keys.BATCHES_DONE],
            {"batch_id": batch_id, "now": repr(now), "now_iso": iso_time(now), "maxlen": str(self.event_stream_maxlen)},
        )
        return bool(finished)

    def record_rejected(self, batch_id: str, line: int, field_name: str, reason: str, raw: Mapping[str, Any]) -> None:
        """Record a rejected input line (idempotent per line), with the field and the rule it broke."""
        record = {"line": line, "field": field_name, "reason": reason, "input": dict(raw)}
        pipe = self._redis.pipeline()
        pipe.hset(keys.batch_rejected(batch_id), str(line), json.dumps(record, ensure_ascii=False))
        pipe.hlen(keys.batch_rejected(batch_id))
        count = pipe.execute()[1]
        self._redis.hset(keys.batch(batch_id), "rejected", count)

    def rejected(self, batch_id: str) -> list[dict[str, Any]]:
        records = [json.loads(v) for v in self._redis.hvals(keys.batch_rejected(batch_id))]
        return in_line_order(records)

    def batch_summary(self, batch_id: str) -> BatchSummary | None:
        h = self._hash(keys.batch(batch_id))
        if not h:
            return None
        return BatchSummary.from_record(batch_id, h)

    def batch_ids(self) -> list[str]:
        return cast(list[str], self._redis.zrange(keys.BATCHES, 0, -1))

    def set_batch_webhook(self, batch_id: str, url: str) -> None:
        self._redis.hset(keys.batch(batch_id), keys.BATCH_WEBHOOK_FIELD, url)

    def batch_webhook(self, batch_id: str) -> str | None:
        return cast(str | None, self._redis.hget(keys.batch(batch_id), keys.BATCH_WEBHOOK_FIELD))

    def billed(self, day: str) -> dict[tuple[str, str], float]:
        return billed_scopes(self._hash(keys.billed(day)))

    # --- jobs -----------------------------------------------------------------------------------
    def create_jobs(self, jobs: list[NewJob]) -> list[Status | None]:
        """`create_job.lua` for each job, in one round trip (each still one atomic step), in order."""
        pipe = self._redis.pipeline(transaction=False)
        for job in jobs:
            batch_id, job_id = refs.split_ref(job.ref)
            self._run(
                "create_job",
                [
                    keys.job(job.ref),
                    keys.batch(batch_id),
                    keys.batch_jobs(batch_id),
                    keys.BATCHES,
                    keys.COUNTS,
                    keys.wait_queue(job.model),
                    keys.wait_clock(job.model),
                    keys.BATCHES_DONE,
                ],
                {
                    "ref": job.ref,
                    "batch_id": batch_id,
                    "job_id": job_id,
                    "line": str(job.line),
                    "model": job.model,
                    "record": job.record,
                },
                client=pipe,
            )
        return [Status(existing) if existing else None for existing in pipe.execute()]

    # --- the wait queues of admission -----------------------------------------------------------
    def next_waiting(self, model: str) -> tuple[str, float] | None:
        """The job first in line for a slot of `model`, with its score; None when nobody waits."""
        found = cast(list[tuple[str, float]], self._redis.zrange(keys.wait_queue(model), 0, 0, withscores=True))
        return found[0] if found else None

    def leave_queue(self, model: str, ref: str) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(keys.wait_queue(model), ref)
        pipe.zrem(keys.held(refs.split_ref(ref)[0]), f"{model}|{ref}")  # held by its batch's cap: out of line too
        waiting, held = pipe.execute()
        return bool(waiting or held)

    def requeue(self, ref: str, model: str) -> bool:
        """Put an accepted job back in line (at its band's current turn); False when it already was."""
        batch_id = refs.split_ref(ref)[0]
        return bool(
            self._run("requeue", [keys.batch(batch_id), keys.wait_queue(model), keys.wait_clock(model)], {"ref": ref})
        )

    def advance_clock(self, model: str, score: float) -> None:
        self._run("advance_clock", [keys.wait_clock(model)], {"position": repr(score % 1e12)})

    def waiting(self, models: list[str]) -> dict[str, int]:
        """How many jobs wait for a slot, per model (only the models with any)."""
        pipe = self._redis.pipeline()
        for model in models:
            pipe.zcard(keys.wait_queue(model))
        return {m: int(n) for m, n in zip(models, pipe.execute(), strict=True) if n}

    def hold(self, model: str, ref: str) -> bool:
        # In the held set before it leaves the queue: a crash in between leaves it in both (an admission from the
        # queue, and an `unhold` that finds it there, are both harmless), never in neither.
        score = self._redis.zscore(keys.wait_queue(model), ref)
        if score is None:
            return False
        batch_id = refs.split_ref(ref)[0]
        self._redis.sadd(keys.HELD_BATCHES, batch_id)
        self._redis.zadd(keys.held(batch_id), {f"{model}|{ref}": score})
        return bool(self._redis.zrem(keys.wait_queue(model), ref))

    def unhold(self, batch_id: str, limit: int = 100) -> int:
        found = cast(list[tuple[str, float]], self._redis.zrange(keys.held(batch_id), 0, limit - 1, withscores=True))
        for member, score in found:
            model, _, ref = member.partition("|")
            self._redis.zadd(keys.wait_queue(model), {ref: score}, nx=True)
            self._redis.zrem(keys.held(batch_id), member)
        if len(found) < limit and not self._redis.zcard(keys.held(batch_id)):
            self._redis.srem(keys.HELD_BATCHES, batch_id)
        return len(found)

    def held(self, batch_id: str) -> int:
        return int(self._redis.zcard(keys.held(batch_id)))

    def held_batches(self) -> list[str]:
        return sorted(cast(set[str], self._redis.smembers(keys.HELD_BATCHES)))

    def get(self, ref: str) -> Job | None:
        h = self._hash(keys.job(ref))
        return Job.from_record(ref, h) if h else None

    def jobs(self, batch_id: str, chunk: int = 500) -> Iterator[Job]:
        """Every job of the batch, in source order, read in pipelined chunks."""
        start = 0
        while True:
            ids = cast(list[str], self._redis.zrange(keys.batch_jobs(batch_id), start, start + chunk - 1))
            if not ids:
                return
            pipe = self._redis.pipeline()
            for job_id in ids:
                pipe.hgetall(keys.job(refs.job_ref(batch_id, job_id)))
            for job_id, h in zip(ids, pipe.execute(), strict=True):
                if h:
                    yield Job.from_record(refs.job_ref(batch_id, job_id), h)
            start += chunk

    def sample_jobs(self, batch_id: str, count: int) -> list[Job]:
        """Up to `count` jobs of the batch, drawn at random (one round trip, whatever the batch's size)."""
        job_ids = cast(list[str], self._redis.zrandmember(keys.batch_jobs(batch_id), count) or [])
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(refs.job_ref(batch_id, job_id)))
        return [
            Job.from_record(refs.job_ref(batch_id, job_id), h)
            for job_id, h in zip(job_ids, pipe.execute(), strict=True)
            if h
        ]

    def _apply(self, move: Move, *, model: str | None = None) -> Applied:
        batch_id = move.batch_id
        move_keys = [
            keys.job(move.ref),
            keys.batch(batch_id),
            keys.DUE,
            self.event_stream,
            keys.COUNTS,
            keys.INFLIGHT,
            keys.FINISHED,
            keys.BATCHES_DONE,
            keys.billed(utc_day(move.now) if move.bill is None else move.bill.day),
        ]
        if move.requeue and model is not None:
            move_keys += [keys.wait_queue(model), keys.wait_clock(model)]
        answer = json.loads(self._run("transition", move_keys, move.as_arguments(self.event_stream_maxlen)))
        return outcome(
            move,
            int(answer["code"]),
            str(answer["status"]),
            int(answer["attempt"]),
            bool(answer["finished"]),
            str(answer["previous"]),
        )

    def pause_account(self, account: str, record: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """Pause `account` and append its event atomically; False (and no event) when it already was paused."""
        paused = self._run(
            "pause_account",
            [keys.PAUSED, self.event_stream],
            {
                "account": account,
                "record": json.dumps(record),
                "event": json.dumps(event, ensure_ascii=False),
                "maxlen": str(self.event_stream_maxlen),
            },
        )
        return bool(paused)

    # --- retention (workers/retention.py) --------------------------------------------------------------
    def purge(self, older_than_s: float, *, now: float | None = None, limit: int = 1000) -> Purged:
        """`purge_job.lua` for each job that ended before the cut-off, then `purge_batch.lua` for each batch that
        finished before it, up to `limit` of each, each one atomic step, in a few round trips."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        cutoff = (time.time() if now is None else now) - older_than_s
        ended = cast(list[str], self._redis.zrangebyscore(keys.FINISHED, "-inf", cutoff, start=0, num=limit))
        jobs = self._purge_jobs(ended, cutoff) if ended else 0
        finished = cast(list[str], self._redis.zrangebyscore(keys.BATCHES_DONE, "-inf", cutoff, start=0, num=limit))
        pipe = self._redis.pipeline(transaction=False)
        for batch_id in finished:
            batch_keys = [
                keys.batch(batch_id),
                keys.batch_jobs(batch_id),
                keys.batch_rejected(batch_id),
                keys.BATCHES,
                keys.BATCHES_DONE,
            ]
            self._run("purge_batch", batch_keys, {"batch_id": batch_id, "cutoff": repr(cutoff)}, client=pipe)
        batches = sum(pipe.execute()) if finished else 0
        return Purged(jobs=jobs, batches=batches, more=len(ended) == limit or len(finished) == limit)

    def _purge_jobs(self, ended: list[str], cutoff: float) -> int:
        """Read the task each job names (its owner goes with it), then purge each job; how many were removed. A
        job revived and ended again between the two has a later end: the script leaves it alone."""
        pipe = self._redis.pipeline(transaction=False)
        for ref in ended:
            pipe.hget(keys.job(ref), "task_id")
        task_ids = pipe.execute()
        terminal = sorted(TERMINAL)
        for ref, task_id in zip(ended, task_ids, strict=True):
            batch_id, job_id = refs.split_ref(ref)
            job_keys = [keys.job(ref), keys.FINISHED, keys.batch(batch_id), keys.batch_jobs(batch_id)]
            if task_id:
                job_keys.append(keys.task_owner(task_id))
            arguments = {"ref": ref, "job_id": job_id, "cutoff": repr(cutoff), "terminal": terminal}
            self._run("purge_job", job_keys, arguments, client=pipe)
        return sum(pipe.execute())

    # --- creates in flight and task owners (reconcile.py) ---------------------------------------------
    def begin_create(self, account: str, model: str, ref: str, sent_at: float) -> None:
        """Record, before it is sent, that the job's create is on its way: until its answer has recorded the
        task's owner, no reconciliation of the scope may adopt a task it could have made."""
        pipe = self._redis.pipeline()
        pipe.zadd(keys.creating(account, model), {ref: sent_at})
        # A job cancelled while its create was lost never ends its entry: an hour on, nobody waits for it.
        pipe.zremrangebyscore(keys.creating(account, model), "-inf", sent_at - 3600)
        pipe.execute()

    def lose_create(self, account: str, model: str, ref: str) -> None:
        """The job's create will get no answer (it timed out, dropped, came garbled): nobody need wait for it,
        but until its reconciliation it still stands for whatever task it may have made."""
        self._redis.sadd(keys.creating_lost(account, model), ref)

    def end_create(self, account: str, model: str, ref: str) -> None:
        """The job's create has an answer (its task's owner is recorded), or was reconciled."""
        pipe = self._redis.pipeline()
        pipe.zrem(keys.creating(account, model), ref)
        pipe.srem(keys.creating_lost(account, model), ref)
        pipe.execute()

    def creates_unresolved(self, account: str, model: str) -> list[tuple[str, float, bool]]:
        """Every create of the scope whose task is not settled yet: (job ref, when it was sent, whether its
        answer is known lost). The others may still be answered."""
        pipe = self._redis.pipeline()
        pipe.zrange(keys.creating(account, model), 0, -1, withscores=True)
        pipe.smembers(keys.creating_lost(account, model))
        found, lost = pipe.execute()
        return [(ref, float(at), ref in lost) for ref, at in found]

    def own_task(self, task_id: str, ref: str) -> bool:
        """Make the job the task's owner, unless a job already is (SET NX: an owner is never replaced). True
        when the job owns it now, including when it already did."""
        owner_key = keys.task_owner(task_id)
        if self._redis.set(owner_key, ref, nx=True, ex=keys.TASK_OWNER_TTL_S):
            return True
        return self._redis.get(owner_key) == ref

    def task_owner(self, task_id: str) -> str | None:
        return cast(str | None, self._redis.get(keys.task_owner(task_id)))

    def count_crash(self, ref: str) -> int:
        """Count an unexpected exception of one of the job's stages; the count so far (0: no such job)."""
        return int(cast(int, self._run("count_crash", [keys.job(ref)])))

    def due(self, now: float, limit: int = 1000) -> list[tuple[str, float]]:
        """Refs whose next action was due at or before `now`, oldest first (for the recovery sweep)."""
        found = self._redis.zrangebyscore(keys.DUE, "-inf", now, start=0, num=limit, withscores=True)
        return cast(list[tuple[str, float]], found)

    def push_due(self, ref: str, due_at: float) -> bool:
        return bool(self._run("push_due", [keys.job(ref), keys.DUE], {"ref": ref, "due_at": repr(due_at)}))

    def drop_due(self, ref: str) -> None:
        self._redis.zrem(keys.DUE, ref)

    # --- events and accounts ------------------------------------------------------------------------
    def emit_event(self, event: Mapping[str, Any]) -> None:
        self._redis.xadd(
            self.event_stream,
            {"event": json.dumps(event, ensure_ascii=False)},
            maxlen=self.event_stream_maxlen,
            approximate=True,
        )

    def read_events(self, after: str = "0", limit: int = 1000) -> tuple[list[dict[str, Any]], str]:
        entries = cast(list[tuple[str, dict[str, str]]], self._redis.xrange(self.event_stream, f"({after}", "+", limit))
        events = [event for _, fields in entries if (event := decoded_event(fields)) is not None]
        return events, entries[-1][0] if entries else after

    def paused_accounts(self) -> dict[str, dict[str, Any]]:
        return {a: json.loads(v) for a, v in cast(dict[str, str], self._redis.hgetall(keys.PAUSED)).items()}

    def resume_account(self, account: str) -> bool:
        return bool(self._redis.hdel(keys.PAUSED, account))

    def gauges(self) -> Gauges:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.COUNTS)
        pipe.hgetall(keys.INFLIGHT)
        pipe.hkeys(keys.PAUSED)
        counts, inflight, paused = pipe.execute()
        return Gauges(
            jobs={s: int(n) for s, n in counts.items()},
            upstream={m: int(n) for m, n in inflight.items()},
            paused=sorted(paused),
        )

    def _hash(self, key: str) -> dict[str, str]:
        # The client is built with decode_responses=True, so replies are str (redis-py types them loosely).
        return cast(dict[str, str], self._redis.hgetall(key))
