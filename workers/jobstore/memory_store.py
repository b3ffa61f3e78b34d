"""The job store in one process: the same promises as `RedisJobStore`, kept in dicts behind one lock.

For the stage tests and anyone embedding genq without Redis. Each operation holds `threading.Lock` for its
whole body, so it is as atomic here as its Lua script is on the server. The Lua (`lua/*.lua`) is the reference:
each private step below names the script it mirrors, and keeps what Redis keeps in the same encoding (a job
record and a batch hash are `dict[str, str]` holding the strings the hashes hold; a sorted set is a `SortedSet`
of `sorted_set.py`, ordered by score then member as Redis orders it). `moves.py` plans every transition, claim
and revival for both stores; `_apply` applies a `Move` exactly as `transition.lua` does.

Differences, none of which a caller of the protocol can observe in one process:

- The event stream is trimmed to exactly `event_stream_maxlen` entries (Redis trims with `~`, at least that
  many), and entry ids are made here in Redis's `{ms}-{seq}` form.
- A task's owner (`own_task`) is kept until its job is purged: Redis also lets it expire after 48 h
  (`keys.TASK_OWNER_TTL_S`), which only bounds the memory a long-lived fleet spends on old tasks (a job's
  earlier tasks, which its record no longer names, leave that way).
"""

from __future__ import annotations

import decimal
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from workers import refs
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
from workers.jobstore.sorted_set import SortedSet

#: Statuses whose job has a task upstream (`transition.lua` counts them per model in `genq:inflight`).
_UPSTREAM = frozenset({Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})


def _hincrby(h: dict[str, str], name: str, by: int) -> int:
    value = int(h.get(name, "0")) + by
    h[name] = str(value)
    return value


def _hincrbyfloat(h: dict[str, str], name: str, by: str) -> None:
    """HINCRBYFLOAT as Redis does it: the stored text and `by` read as written (Redis adds in long double), the
    sum printed with 17 decimal places and the trailing zeros cut (`%.17Lf`, human form: 1.1 + 0.1 is "1.2").
    The sum here is exact, so it is Redis's own for what genq adds (whole images and seconds, short decimals);
    for arbitrary floats, long double rounding can differ from it in the 17th decimal."""
    total = decimal.Decimal(h.get(name, "0")) + decimal.Decimal(by)
    text = format(total.quantize(decimal.Decimal("1e-17"), rounding=decimal.ROUND_HALF_EVEN), "f")
    h[name] = text.rstrip("0").rstrip(".") if "." in text else text


def _lua_number(value: float) -> str:
    """A Lua number as the Redis genq runs (Valkey 8) writes it when a script passes one to a command: an
    integer in full, anything else in its shortest round-tripping form (0.1, not 0.10000000000000001)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class MemoryJobStore(Planned):
    """`JobStore` in one process (see `protocol.py` for what each operation promises)."""

    def __init__(self, *, event_stream: str = "genq:events", event_stream_maxlen: int = 100_000) -> None:
        self.event_stream = event_stream
        self.event_stream_maxlen = event_stream_maxlen
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, str]] = {}  # genq:job:{ref}
        self._batches: dict[str, dict[str, str]] = {}  # genq:batch:{batch_id}
        self._batch_jobs: dict[str, SortedSet] = {}  # genq:batch:{batch_id}:jobs
        self._rejected: dict[str, dict[str, str]] = {}  # genq:batch:{batch_id}:rejected
        self._batch_order = SortedSet()  # genq:batches
        self._finished = SortedSet()  # genq:finished
        self._batches_done = SortedSet()  # genq:batches:done
        self._due = SortedSet()  # genq:due
        self._queues: dict[str, SortedSet] = {}  # genq:wait:{model}
        self._clocks: dict[str, str] = {}  # genq:wait:{model}:clock
        self._counts: dict[str, int] = {}  # genq:counts
        self._inflight: dict[str, int] = {}  # genq:inflight
        self._paused: dict[str, str] = {}  # genq:paused
        self._creating: dict[tuple[str, str], SortedSet] = {}  # genq:creating:{account}:{model}
        self._lost: dict[tuple[str, str], set[str]] = {}  # genq:creating:{account}:{model}:lost
        self._owners: dict[str, str] = {}  # genq:task:{task_id} (no TTL here: purged with its job)
        self._billed: dict[str, dict[str, str]] = {}  # genq:billed:{day} (no TTL here)
        self._held: dict[str, SortedSet] = {}  # genq:held:{batch_id}
        self._events: deque[tuple[str, dict[str, str]]] = deque(maxlen=event_stream_maxlen)  # the event stream
        self._last_entry = (0, 0)

    # --- batches --------------------------------------------------------------------------------
    def open_batch(self, batch_id: str, *, source: str, priority: int = 5, now: float | None = None) -> bool:
        """Create the batch or reopen it for more jobs, with its admission priority (0-9, 9 first).
        True when it is new."""
        if not 0 <= priority <= 9:
            raise ValueError(f"priority must be 0-9, got {priority}")
        now = time.time() if now is None else now
        with self._lock:
            h = self._batches.setdefault(batch_id, {})
            created = "created_at" not in h
            if created:
                h["created_at"] = repr(now)
            h.update({"sealed": "0", "source": source, "priority": repr(priority)})
            self._batch_order.add(batch_id, now, nx=True)
            self._batches_done.remove(batch_id)  # unsealed: not finished until it is sealed again
            return created

    def seal_batch(self, batch_id: str, *, now: float | None = None) -> bool:
        """No more jobs will be added. True when this finished the batch (every job already terminal)."""
        now = time.time() if now is None else now
        with self._lock:
            batch = self._batches.setdefault(batch_id, {})
            batch["sealed"] = "1"
            if "done_at" in batch:  # `seal_batch.lua`: finished before it was reopened, indexed again as it was
                self._batches_done.add(batch_id, float(batch["done_at"]))
                return False
            return self._finish_batch(batch_id, repr(now), iso_time(now))

    def record_rejected(self, batch_id: str, line: int, field_name: str, reason: str, raw: Mapping[str, Any]) -> None:
        """Record a rejected input line (idempotent per line), with the field and the rule it broke."""
        record = {"line": line, "field": field_name, "reason": reason, "input": dict(raw)}
        with self._lock:
            rejected = self._rejected.setdefault(batch_id, {})
            rejected[str(line)] = json.dumps(record, ensure_ascii=False)
            self._batches.setdefault(batch_id, {})["rejected"] = str(len(rejected))

    def rejected(self, batch_id: str) -> list[dict[str, Any]]:
        with self._lock:
            records = [json.loads(v) for v in self._rejected.get(batch_id, {}).values()]
        return in_line_order(records)

    def batch_summary(self, batch_id: str) -> BatchSummary | None:
        with self._lock:
            h = dict(self._batches.get(batch_id, {}))
        if not h:
            return None
        return BatchSummary.from_record(batch_id, h)

    def batch_ids(self) -> list[str]:
        with self._lock:
            return self._batch_order.members()

    def set_batch_webhook(self, batch_id: str, url: str) -> None:
        with self._lock:
            self._batches.setdefault(batch_id, {})[keys.BATCH_WEBHOOK_FIELD] = url

    def batch_webhook(self, batch_id: str) -> str | None:
        with self._lock:
            return self._batches.get(batch_id, {}).get(keys.BATCH_WEBHOOK_FIELD)

    def billed(self, day: str) -> dict[tuple[str, str], float]:
        with self._lock:
            return billed_scopes(self._billed.get(day, {}))

    # --- jobs -----------------------------------------------------------------------------------
    def create_jobs(self, jobs: list[NewJob]) -> list[Status | None]:
        """`create_job.lua` for each job, each one atomic step, in order."""
        found: list[Status | None] = []
        for job in jobs:
            with self._lock:
                existing = self._create_job(job)
            found.append(Status(existing) if existing else None)
        return found

    def _create_job(self, new: NewJob) -> str | None:
        """`create_job.lua`: the existing job's status, or '' when created."""
        if new.ref in self._jobs:
            return self._jobs[new.ref].get("status")
        batch_id, job_id = refs.split_ref(new.ref)
        record = self._jobs[new.ref] = {name: str(value) for name, value in new.record.items()}
        self._batch_jobs.setdefault(batch_id, SortedSet()).add(job_id, float(new.line))
        status = record["status"]
        batch = self._batches.setdefault(batch_id, {})
        _hincrby(batch, "total", 1)
        _hincrby(batch, "n:" + status, 1)
        self._counts[status] = self._counts.get(status, 0) + 1
        batch.pop("done_at", None)
        self._batches_done.remove(batch_id)
        clock = float(self._clocks.get(new.model, "0"))
        base_field = "wait_base:" + new.model
        base = float(batch.get(base_field, "-1"))
        if base < 0:
            base = clock
            batch[base_field] = _lua_number(base)
        position = max(base + _hincrby(batch, "wait_n:" + new.model, 1), clock)
        self._queues.setdefault(new.model, SortedSet()).add(new.ref, self._queue_score(batch_id, position), nx=True)
        return ""

    def get(self, ref: str) -> Job | None:
        with self._lock:
            record = dict(self._jobs.get(ref, {}))
        return Job.from_record(ref, record) if record else None

    def jobs(self, batch_id: str) -> Iterator[Job]:
        """Every job of the batch, in source order (as they were when the iteration started)."""
        with self._lock:
            members = self._batch_jobs.get(batch_id, SortedSet()).members()
            found = [(ref, dict(self._jobs.get(ref, {}))) for ref in (refs.job_ref(batch_id, j) for j in members)]
        for ref, record in found:
            if record:
                yield Job.from_record(ref, record)

    def sample_jobs(self, batch_id: str, count: int) -> list[Job]:
        """Up to `count` jobs of the batch, drawn at random (ZRANDMEMBER: distinct, or with repeats when
        `count` is negative)."""
        with self._lock:
            members = self._batch_jobs.get(batch_id, SortedSet()).members()
            if count >= 0:
                drawn = random.sample(members, min(count, len(members)))
            else:
                drawn = random.choices(members, k=-count) if members else []
            found = [(ref, dict(self._jobs.get(ref, {}))) for ref in (refs.job_ref(batch_id, j) for j in drawn)]
        return [Job.from_record(ref, record) for ref, record in found if record]

    def _apply(self, move: Move, *, model: str | None = None) -> Applied:
        # The same named arguments `transition.lua` gets, read as it reads them.
        a = move.as_arguments(self.event_stream_maxlen)
        if move.bill is not None:
            a["bill_day"] = move.bill.day  # Redis gets the day as its key
        with self._lock:
            code, status, attempt, finished, previous = self._transition(a, model if move.requeue else None)
        return outcome(move, code, status, attempt, finished, previous)

    def _transition(self, a: dict[str, Any], queue_model: str | None) -> tuple[int, str, int, bool, str]:
        """`transition.lua`: (code, status, attempt, finished, previous)."""
        ref, batch_id, target = a["ref"], a["batch_id"], a["target"]
        job = self._jobs.get(ref)
        if job is None or job.get("status") is None:
            return -1, "", 0, False, ""
        status, attempt = job["status"], int(job.get("attempt") or "0")
        if a.get("expected_attempt") is not None and int(a["expected_attempt"]) != attempt:
            return 0, status, attempt, False, status
        if status not in a["sources"]:
            return -2, status, attempt, False, status
        if a["bump"]:
            attempt += 1
        job.update({"status": target, "attempt": str(attempt)})
        job.update(a["fields"])
        if a.get("due_at") is None:
            self._due.remove(ref)
            job["due_at"] = ""
        else:
            self._due.add(ref, float(a["due_at"]))
            job["due_at"] = a["due_at"]
        if queue_model is not None:
            clock = float(self._clocks.get(queue_model, "0"))
            self._queues.setdefault(queue_model, SortedSet()).add(ref, self._queue_score(batch_id, clock), nx=True)
        bill = a.get("bill")
        if bill is not None and job.get("billed_origin") != bill["origin"]:
            job["billed_origin"] = bill["origin"]
            _hincrbyfloat(job, "billed_units", bill["units"])
            _hincrbyfloat(self._batches.setdefault(batch_id, {}), "billed:" + bill["model"], bill["units"])
            _hincrbyfloat(self._billed.setdefault(a["bill_day"], {}), bill["scope"], bill["units"])
        finished = False
        if status != target:
            terminal = set(a["terminal"])
            job["t_" + target] = a["now"]
            batch = self._batches.setdefault(batch_id, {})
            _hincrby(batch, "n:" + status, -1)
            _hincrby(batch, "n:" + target, 1)
            self._counts[status] = self._counts.get(status, 0) - 1
            self._counts[target] = self._counts.get(target, 0) + 1
            if (status in _UPSTREAM) != (target in _UPSTREAM):
                job_model = job.get("model", "unknown")
                self._inflight[job_model] = self._inflight.get(job_model, 0) + (1 if target in _UPSTREAM else -1)
            if a.get("event") is not None:
                self._append_event(a["event"])
            if target in terminal:
                _hincrby(batch, "terminal", 1)
                self._finished.add(ref, float(a["now"]))
                finished = self._finish_batch(batch_id, a["now"], a["now_iso"])
            elif status in terminal:  # revived: the batch has a job to wait for again
                _hincrby(batch, "terminal", -1)
                batch.pop("done_at", None)
                self._finished.remove(ref)
                self._batches_done.remove(batch_id)
        return 1, target, attempt, finished, status

    def count_crash(self, ref: str) -> int:
        """Count an unexpected exception of one of the job's stages; the count so far (0: no such job)."""
        with self._lock:
            job = self._jobs.get(ref)
            return 0 if job is None else _hincrby(job, "stage_crashes", 1)

    # --- the wait queues of admission -----------------------------------------------------------
    def next_waiting(self, model: str) -> tuple[str, float] | None:
        """The job first in line for a slot of `model`, with its score; None when nobody waits."""
        with self._lock:
            queue = self._queues.get(model)
            return queue.first() if queue is not None else None

    def leave_queue(self, model: str, ref: str) -> bool:
        with self._lock:
            queue, held = self._queues.get(model), self._held.get(refs.split_ref(ref)[0])
            waiting = queue is not None and queue.remove(ref)
            was_held = held is not None and held.remove(f"{model}|{ref}")
            return waiting or was_held

    def requeue(self, ref: str, model: str) -> bool:
        """`requeue.lua`: put an accepted job back in line (at its band's current turn); False when it already
        was."""
        batch_id = refs.split_ref(ref)[0]
        with self._lock:
            clock = float(self._clocks.get(model, "0"))
            return self._queues.setdefault(model, SortedSet()).add(ref, self._queue_score(batch_id, clock), nx=True)

    def advance_clock(self, model: str, score: float) -> None:
        """`advance_clock.lua`: the queue's clock moves up to the admitted job's position (never back)."""
        position = repr(score % 1e12)
        with self._lock:
            if float(position) > float(self._clocks.get(model, "0")):
                self._clocks[model] = position

    def waiting(self, models: list[str]) -> dict[str, int]:
        """How many jobs wait for a slot, per model (only the models with any)."""
        with self._lock:
            counts = {m: len(self._queues.get(m, ())) for m in models}
        return {m: n for m, n in counts.items() if n}

    def hold(self, model: str, ref: str) -> bool:
        with self._lock:
            queue = self._queues.get(model)
            score = queue.score(ref) if queue is not None else None
            if queue is None or score is None:
                return False
            self._held.setdefault(refs.split_ref(ref)[0], SortedSet()).add(f"{model}|{ref}", score)
            return queue.remove(ref)

    def unhold(self, batch_id: str, limit: int = 100) -> int:
        with self._lock:
            held = self._held.get(batch_id)
            found = held.items()[:limit] if held is not None else []
            for member, score in found:
                model, _, ref = member.partition("|")
                self._queues.setdefault(model, SortedSet()).add(ref, score, nx=True)
                assert held is not None
                held.remove(member)
            return len(found)

    def held(self, batch_id: str) -> int:
        with self._lock:
            return len(self._held.get(batch_id, ()))

    def held_batches(self) -> list[str]:
        with self._lock:
            return sorted(batch for batch, held in self._held.items() if len(held))

    def _queue_score(self, batch_id: str, position: float) -> float:
        """`queue_score` of `finish_batch.lua`: the batch's priority band (9 - priority), then `position`."""
        band = 9 - float(self._batches.get(batch_id, {}).get("priority", "5"))
        return band * 1e12 + position

    # --- the due index (the recovery sweep) -----------------------------------------------------
    def due(self, now: float, limit: int = 1000) -> list[tuple[str, float]]:
        """Refs whose next action was due at or before `now`, oldest first (for the recovery sweep)."""
        with self._lock:
            return self._due.up_to(now, limit)

    def push_due(self, ref: str, due_at: float) -> bool:
        """`push_due.lua`: move the job's due time later (never earlier), in the index and on the job, if it
        is indexed and exists."""
        with self._lock:
            score = self._due.score(ref)
            if score is None or score >= due_at or ref not in self._jobs:
                return False
            self._due.add(ref, due_at)
            self._jobs[ref]["due_at"] = repr(due_at)
            return True

    def drop_due(self, ref: str) -> None:
        with self._lock:
            self._due.remove(ref)

    # --- events and accounts --------------------------------------------------------------------
    def emit_event(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self._append_event(json.dumps(event, ensure_ascii=False))

    def events(self) -> list[dict[str, Any]]:
        """The events in the stream, oldest first, decoded (what a consumer of `event_stream` reads)."""
        with self._lock:
            return [json.loads(fields["event"]) for _, fields in self._events]

    def read_events(self, after: str = "0", limit: int = 1000) -> tuple[list[dict[str, Any]], str]:
        def entry(entry_id: str) -> tuple[int, int]:
            ms, _, seq = entry_id.partition("-")
            return int(ms), int(seq or 0)

        with self._lock:
            later = [(i, fields) for i, fields in self._events if entry(i) > entry(after)][:limit]
        events = [event for _, fields in later if (event := decoded_event(fields)) is not None]
        return events, later[-1][0] if later else after

    def pause_account(self, account: str, record: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """`pause_account.lua`: pause `account` and append its event atomically; False (and no event) when it
        already was paused."""
        with self._lock:
            if account in self._paused:
                return False
            self._paused[account] = json.dumps(record)
            self._append_event(json.dumps(event, ensure_ascii=False))
            return True

    def paused_accounts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {a: json.loads(v) for a, v in self._paused.items()}

    def resume_account(self, account: str) -> bool:
        with self._lock:
            return self._paused.pop(account, None) is not None

    def gauges(self) -> Gauges:
        with self._lock:
            return Gauges(jobs=dict(self._counts), upstream=dict(self._inflight), paused=sorted(self._paused))

    # --- retention (workers/retention.py) ----------------------------------------------------------
    def purge(self, older_than_s: float, *, now: float | None = None, limit: int = 1000) -> Purged:
        """`purge_job.lua` for each job that ended before the cut-off, then `purge_batch.lua` for each batch that
        finished before it, up to `limit` of each."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._lock:
            ended = [ref for ref, _ in self._finished.up_to(cutoff, limit)]
            jobs = sum(self._purge_job(ref) for ref in ended)
            finished = [batch_id for batch_id, _ in self._batches_done.up_to(cutoff, limit)]
            batches = sum(self._purge_batch(batch_id) for batch_id in finished)
        return Purged(jobs=jobs, batches=batches, more=len(ended) == limit or len(finished) == limit)

    def _purge_job(self, ref: str) -> bool:
        """`purge_job.lua`, for a job the index holds as ended before the cut-off: True when it was removed."""
        self._finished.remove(ref)
        job = self._jobs.get(ref)
        if job is not None and job.get("status") not in TERMINAL:  # indexed, yet not finished: only the entry goes
            return False
        batch_id, job_id = refs.split_ref(ref)
        task_id = (job or {}).get("task_id")
        if task_id and self._owners.get(task_id) == ref:
            del self._owners[task_id]
        self._batch_jobs.get(batch_id, SortedSet()).remove(job_id)
        if job is None:
            return False
        del self._jobs[ref]
        if batch_id in self._batches:
            _hincrby(self._batches[batch_id], "purged", 1)
        return True

    def _purge_batch(self, batch_id: str) -> bool:
        """`purge_batch.lua`, for a batch the index holds as finished before the cut-off: True when removed."""
        batch = self._batches.get(batch_id, {})
        if batch.get("sealed") != "1" or "done_at" not in batch:  # indexed, yet not finished: only the entry goes
            self._batches_done.remove(batch_id)
            return False
        if len(self._batch_jobs.get(batch_id, ())):
            return False
        for held in (self._batches, self._batch_jobs, self._rejected):
            held.pop(batch_id, None)
        self._batch_order.remove(batch_id)
        self._batches_done.remove(batch_id)
        return True

    # --- creates in flight and task owners (reconcile.py) -----------------------------------------
    def begin_create(self, account: str, model: str, ref: str, sent_at: float) -> None:
        """Record, before it is sent, that the job's create is on its way: until its answer has recorded the
        task's owner, no reconciliation of the scope may adopt a task it could have made."""
        with self._lock:
            creating = self._creating.setdefault((account, model), SortedSet())
            creating.add(ref, sent_at)
            # A job cancelled while its create was lost never ends its entry: an hour on, nobody waits for it.
            creating.drop_up_to(sent_at - 3600)

    def lose_create(self, account: str, model: str, ref: str) -> None:
        """The job's create will get no answer: nobody need wait for it, but until its reconciliation it still
        stands for whatever task it may have made."""
        with self._lock:
            self._lost.setdefault((account, model), set()).add(ref)

    def end_create(self, account: str, model: str, ref: str) -> None:
        """The job's create has an answer (its task's owner is recorded), or was reconciled."""
        with self._lock:
            self._creating.get((account, model), SortedSet()).remove(ref)
            self._lost.get((account, model), set()).discard(ref)

    def creates_unresolved(self, account: str, model: str) -> list[tuple[str, float, bool]]:
        """Every create of the scope whose task is not settled yet: (job ref, when it was sent, whether its
        answer is known lost)."""
        with self._lock:
            found = self._creating.get((account, model), SortedSet()).items()
            lost = set(self._lost.get((account, model), set()))
        return [(ref, at, ref in lost) for ref, at in found]

    def own_task(self, task_id: str, ref: str) -> bool:
        """Make the job the task's owner, unless a job already is (an owner is never replaced). True when the
        job owns it now, including when it already did. Kept for the store's life (Redis: 48 h)."""
        with self._lock:
            return self._owners.setdefault(task_id, ref) == ref

    def task_owner(self, task_id: str) -> str | None:
        with self._lock:
            return self._owners.get(task_id)

    # --- shared steps (call with the lock held) ---------------------------------------------------
    def _append_event(self, event_json: str) -> None:
        """XADD to the event stream, trimmed to `event_stream_maxlen`, with an id in Redis's `{ms}-{seq}` form."""
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last_entry
        self._last_entry = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        self._events.append((f"{self._last_entry[0]}-{self._last_entry[1]}", {"event": event_json}))

    def _finish_batch(self, batch_id: str, now: str, now_iso: str) -> bool:
        """`finish_batch` of `finish_batch.lua`: when the sealed batch has every job terminal, stamp it done
        (once) and append its event. True when this call finished it."""
        b = self._batches.get(batch_id, {})
        if b.get("sealed") != "1" or "done_at" in b or int(b.get("total", "0")) != int(b.get("terminal", "0")):
            return False
        b["done_at"] = now
        self._batches_done.add(batch_id, float(now))
        counts = {k[2:]: int(v) for k, v in b.items() if k.startswith("n:") and int(v) != 0}
        billed = {k[7:]: json.loads(v) for k, v in b.items() if k.startswith("billed:") and float(v) != 0}
        data = {
            "batch_id": batch_id,
            "total": int(b.get("total", "0")),
            "rejected": int(b.get("rejected", "0")),
            "counts": counts,
            "billed": billed,
        }
        event = {
            "specversion": "1.0",
            "id": f"batch/{batch_id}/finished/{now}",
            "source": "genq",
            "type": "genq.batch.finished",
            "subject": batch_id,
            "time": now_iso,
            "datacontenttype": "application/json",
            "data": data,
        }
        self._append_event(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        return True
