"""What the job store does, as the rest of genq sees it: named operations, nothing about how they are kept.

Two implementations keep the same promises: `RedisJobStore` (the fleet's, each change one atomic Lua script)
and `MemoryJobStore` (one process: the stage tests, and anyone embedding genq without Redis). The contract
tests (`tests/unit/test_job_store_contract.py`) run one body per promise against both.

A finished job, and a sealed batch once all its jobs are gone, leave the store through `purge`, `retention_s`
after they ended (`workers/retention.py` runs it); the bucket's manifests stay the durable record.

Every change of a job's status is a `transition`, a compare-and-set on its `attempt` along the table of
`workers/job.py`; a claim is a transition that advances the attempt, and a revival (`genq retry`) is one that
resets the job's try and puts it back in line. In the same atomic step a transition keeps the batch's
counters, the due index, the tasks-in-flight count, and appends the job's event when its status changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.billing import Bill
from workers.job import Action, Job, Status


@dataclass(frozen=True)
class NewJob:
    """A job to create: its ref, source line, model (its wait queue) and record (`job.record_of`)."""

    ref: str
    line: int
    model: str
    record: Mapping[str, str]


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
    purged: int = 0  # jobs that ended long ago and left the store (still in `total`, `terminal` and `counts`)
    done_at: float | None = None
    created_at: float | None = None
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    billed: dict[str, float] = field(default_factory=dict)  # model -> units the service billed for the batch

    @classmethod
    def from_record(cls, batch_id: str, h: Mapping[str, str]) -> BatchSummary:
        """The summary of a batch stored as `h` (the batch's record, every value a string)."""
        return cls(
            batch_id=batch_id,
            total=int(h.get("total", 0)),
            terminal=int(h.get("terminal", 0)),
            rejected=int(h.get("rejected", 0)),
            sealed=h.get("sealed") == "1",
            purged=int(h.get("purged", 0)),
            done_at=float(h["done_at"]) if h.get("done_at") else None,
            created_at=float(h["created_at"]) if h.get("created_at") else None,
            source=h.get("source", ""),
            counts={k[2:]: int(v) for k, v in h.items() if k.startswith("n:") and int(v)},
            billed={k[7:]: float(v) for k, v in h.items() if k.startswith("billed:") and float(v)},
        )

    @property
    def done(self) -> bool:
        return self.sealed and self.terminal >= self.total

    @property
    def succeeded(self) -> int:
        return self.counts.get(Status.SUCCEEDED, 0) + self.counts.get(Status.PARTIALLY_SUCCEEDED, 0)


def in_line_order(rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rejected-line records sorted by their line, as `JobStore.rejected` returns them."""
    return sorted(rejected, key=lambda r: int(r["line"]))


@dataclass(frozen=True)
class Purged:
    """What one `purge` removed: finished jobs, finished batches; `more` when it stopped at its limit."""

    jobs: int = 0
    batches: int = 0
    more: bool = False


@dataclass(frozen=True)
class Gauges:
    """Fleet-wide state for the metrics: jobs per status, tasks upstream per model, paused accounts."""

    jobs: dict[str, int]
    upstream: dict[str, int]
    paused: list[str]


class JobStore(Protocol):
    """Jobs, batches, the wait queues, the due index, events, paused accounts, creates in flight, task owners."""

    #: Where events are appended (the name consumers read them by: webhooks, event-driven stages).
    event_stream: str

    # --- batches ------------------------------------------------------------------------------------
    def open_batch(self, batch_id: str, *, source: str, priority: int = 5, now: float | None = None) -> bool:
        """Create the batch or reopen it for more jobs, with its admission priority (0-9, 9 first). True when new."""

    def seal_batch(self, batch_id: str, *, now: float | None = None) -> bool:
        """No more jobs will be added. True when this finished the batch (every job already terminal)."""

    def record_rejected(self, batch_id: str, line: int, field_name: str, reason: str, raw: Mapping[str, Any]) -> None:
        """Record a rejected input line (idempotent per line), with the field and the rule it broke."""

    def rejected(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's rejected lines, in line order."""

    def batch_summary(self, batch_id: str) -> BatchSummary | None: ...

    def batch_ids(self) -> list[str]:
        """Every batch, oldest first."""

    def set_batch_webhook(self, batch_id: str, url: str) -> None:
        """Send the batch's events to `url` (instead of the configured webhook)."""

    def batch_webhook(self, batch_id: str) -> str | None: ...

    def billed(self, day: str) -> dict[tuple[str, str], float]:
        """(account, model) -> units billed on the UTC day `day` (`YYYY-MM-DD`, `workers/billing.py`)."""

    # --- jobs ---------------------------------------------------------------------------------------
    def create_jobs(self, jobs: list[NewJob]) -> list[Status | None]:
        """Create each job (waiting in its model's queue) unless it exists, in order: None when created, else
        the existing job's status. Each job is one atomic step."""

    def get(self, ref: str) -> Job | None: ...

    def jobs(self, batch_id: str) -> Iterator[Job]:
        """Every job of the batch, in source order."""

    def sample_jobs(self, batch_id: str, count: int) -> list[Job]:
        """Up to `count` jobs of the batch, drawn at random."""

    def transition(
        self,
        ref: str,
        target: Status,
        *,
        expected_attempt: int | None,
        next_action: Action = Action.NONE,
        due_at: float | None = None,
        fields: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        now: float | None = None,
        bill: Bill | None = None,
    ) -> Applied:
        """Move the job to `target` if its attempt is still `expected_attempt` (None: any) and the table allows
        it. A terminal target leaves the due index; any other schedules `next_action` at `due_at`. `event` is
        appended if the status changes. `bill` (what the task billed) is added, once per origin, to the job's,
        its batch's and its day's billed units in the same step."""

    def claim(
        self,
        ref: str,
        status: Status,
        *,
        expected_attempt: int,
        action: Action,
        lease_until: float,
        fields: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> Applied:
        """Take the job for `action`: a transition that advances its attempt, so a message carrying the old one
        finds it moved on; due again at `lease_until` (the recovery sweep re-sends it if nobody records)."""

    def revive(self, job: Job, *, now: float | None = None) -> Applied:
        """Bring an ended job (`job.REVIVABLE`) back to `accepted`, its try reset (`job.PER_TRY`), in its model's
        wait queue; a compare-and-set on the attempt `job` was read at."""

    def count_crash(self, ref: str) -> int:
        """Count an unexpected exception of one of the job's stages; the count so far (0: no such job)."""

    # --- the wait queues of admission ---------------------------------------------------------------
    def next_waiting(self, model: str) -> tuple[str, float] | None:
        """The job first in line for a slot of `model`, with its score; None when nobody waits."""

    def leave_queue(self, model: str, ref: str) -> bool:
        """Take the job out of line: its model's queue, or its batch's held set; False when it was in neither."""

    def requeue(self, ref: str, model: str) -> bool:
        """Put an accepted job back in line (at its band's current turn); False when it already was."""

    def advance_clock(self, model: str, score: float) -> None:
        """A job of `score` was admitted: the queue's fair clock moves up to it."""

    def waiting(self, models: list[str]) -> dict[str, int]:
        """How many jobs wait for a slot, per model (only the models with any)."""

    def hold(self, model: str, ref: str) -> bool:
        """Take a waiting job out of its model's queue into its batch's held set (its batch's budget cap is
        reached), keeping its place; False when it was not in the queue."""

    def unhold(self, batch_id: str, limit: int = 100) -> int:
        """Put up to `limit` of the batch's held jobs back in their queues, at the places they had, first held
        first; how many."""

    def held(self, batch_id: str) -> int:
        """How many of the batch's jobs are held by its budget cap."""

    def held_batches(self) -> list[str]:
        """The batches that hold jobs (or did, until their next `unhold` found none)."""

    # --- the due index (the recovery sweep) ---------------------------------------------------------
    def due(self, now: float, limit: int = 1000) -> list[tuple[str, float]]:
        """Refs whose next action was due at or before `now`, oldest first."""

    def push_due(self, ref: str, due_at: float) -> bool:
        """Move a job's due time later (never earlier), on the job and in the index, if it is indexed."""

    def drop_due(self, ref: str) -> None:
        """Take a job out of the due index (it ended, or waits in its queue instead)."""

    # --- events and accounts ------------------------------------------------------------------------
    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Append an event that goes with no change of status (a result at risk, a request answered)."""

    def read_events(self, after: str = "0", limit: int = 1000) -> tuple[list[dict[str, Any]], str]:
        """The events of up to `limit` entries of the stream that came after the entry id `after` ("0": from the
        oldest kept), oldest first, and the id of the last entry read (the next page starts after it; `after`
        when there was none). An entry that is not an event genq wrote is skipped."""

    def pause_account(self, account: str, record: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """Pause `account` and append its event atomically; False (and no event) when it already was."""

    def paused_accounts(self) -> dict[str, dict[str, Any]]:
        """Paused account -> its pause record (code, message, at)."""

    def resume_account(self, account: str) -> bool:
        """Lift the pause; True when the account was paused."""

    def gauges(self) -> Gauges: ...

    # --- retention (workers/retention.py) ----------------------------------------------------------
    def purge(self, older_than_s: float, *, now: float | None = None, limit: int = 1000) -> Purged:
        """Remove up to `limit` jobs that reached a terminal status more than `older_than_s` before `now`: each
        job's record, its task's owner and its place in its batch (whose counters keep counting it); then up to
        `limit` sealed batches finished before that, once none of their jobs is left: record, rejected rows and
        place among the batches. A job or batch that is not finished is never touched. Idempotent."""

    # --- creates in flight and task owners (reconcile.py) -------------------------------------------
    def begin_create(self, account: str, model: str, ref: str, sent_at: float) -> None:
        """Record, before it is sent, that the job's create is on its way: until its answer has recorded the
        task's owner, no reconciliation of the scope may adopt a task it could have made."""

    def lose_create(self, account: str, model: str, ref: str) -> None:
        """The job's create will get no answer: nobody need wait for it, but until its reconciliation it still
        stands for whatever task it may have made."""

    def end_create(self, account: str, model: str, ref: str) -> None:
        """The job's create has an answer (its task's owner is recorded), or was reconciled."""

    def creates_unresolved(self, account: str, model: str) -> list[tuple[str, float, bool]]:
        """Every create of the scope whose task is not settled: (ref, when it was sent, whether known lost)."""

    def own_task(self, task_id: str, ref: str) -> bool:
        """Make the job the task's owner unless a job already is (an owner is never replaced). True when the job
        owns it now, including when it already did."""

    def task_owner(self, task_id: str) -> str | None: ...


def billed_scopes(day: Mapping[str, str]) -> dict[tuple[str, str], float]:
    """A day's billed totals as stored (`{account}|{model}` -> units) by (account, model)."""
    scopes: dict[tuple[str, str], float] = {}
    for scope, units in day.items():
        account, _, model = scope.partition("|")
        scopes[(account, model)] = float(units)
    return scopes


def decoded_event(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """The event of a stream entry (its `event` field, JSON), or None for an entry genq did not write."""
    try:
        event = json.loads(fields.get("event", ""))
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
