"""A transition as a value: what both stores apply, planned once here so that they cannot disagree.

`plan` turns a caller's request (a transition, a claim, a revival) into a `Move` with every figure the atomic
step needs: the statuses it may come from (the table of `workers/job.py`), the fields encoded as the store
keeps them, the event as JSON. `outcome` reads the store's answer back into an `Applied`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers import metrics
from workers.billing import BILLED_DAY_TTL_S, Bill
from workers.events import iso_time
from workers.job import TERMINAL, Action, Job, Status, allowed_sources, encode, per_try_reset, settable_field
from workers.jobstore.protocol import Applied
from workers.refs import split_ref

_REASONS = {0: "attempt moved on", -1: "no such job"}


@dataclass(frozen=True)
class Move:
    """One change of one job, applied atomically by a store (see `lua/transition.lua` for the Redis form)."""

    ref: str
    target: Status
    sources: frozenset[Status]
    expected_attempt: int | None
    bump: bool
    due_at: float | None  # None: the job leaves the due index
    fields: dict[str, str]
    event: str | None  # the job's event (JSON), appended when its status changes
    now: float
    requeue: bool = False  # back in its model's wait queue (a revival)
    bill: Bill | None = None  # what the task billed, counted with this move (once per origin)

    @property
    def batch_id(self) -> str:
        return split_ref(self.ref)[0]

    def as_arguments(self, maxlen: int) -> dict[str, Any]:
        """The named arguments of `transition.lua`; absent ones are left out (the script reads them as nil)."""
        arguments: dict[str, Any] = {
            "ref": self.ref,
            "batch_id": self.batch_id,
            "target": self.target.value,
            "sources": sorted(self.sources),
            "terminal": sorted(TERMINAL),
            "bump": self.bump,
            "maxlen": str(maxlen),
            "now": repr(self.now),
            "now_iso": iso_time(self.now),
            "fields": self.fields,
            "requeue": self.requeue,
        }
        if self.expected_attempt is not None:
            arguments["expected_attempt"] = self.expected_attempt
        if self.due_at is not None:
            arguments["due_at"] = repr(self.due_at)
        if self.event is not None:
            arguments["event"] = self.event
        if self.bill is not None:
            arguments["bill"] = {
                "units": repr(float(self.bill.units)),
                "origin": self.bill.origin,
                "model": self.bill.model,
                "scope": self.bill.scope,
                "ttl_s": BILLED_DAY_TTL_S,
            }
        return arguments


def plan(
    ref: str,
    target: Status,
    *,
    expected_attempt: int | None,
    bump: bool = False,
    next_action: Action = Action.NONE,
    due_at: float | None = None,
    fields: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
    now: float | None = None,
    bill: Bill | None = None,
) -> Move:
    """A transition or a claim. A terminal target leaves the due index and has no next action."""
    terminal = target in TERMINAL
    refused = sorted(name for name in fields or {} if not settable_field(name))
    if refused:  # the record's fields are listed once, on `Job`; the move's own are the store's to write
        raise ValueError(f"fields a change may not set (workers/job.py, settable_field): {', '.join(refused)}")
    encoded = {"next_action": encode(Action.NONE if terminal else next_action)}
    encoded.update({name: encode(value) for name, value in (fields or {}).items()})
    return Move(
        ref=ref,
        target=target,
        sources=allowed_sources(target),
        expected_attempt=expected_attempt,
        bump=bump,
        due_at=None if terminal else due_at,
        fields=encoded,
        event=json.dumps(event, ensure_ascii=False) if event else None,
        now=time.time() if now is None else now,
        bill=bill,
    )


def plan_revival(job: Job, *, now: float | None = None) -> Move:
    """`genq retry` of an ended job: back to `accepted` in its model's queue, its try reset, its attempt
    advanced (any message of the old try finds it moved on)."""
    fields = {**per_try_reset(), "next_action": encode(Action.ADMIT), "retries": encode(job.retries + 1)}
    return Move(
        ref=job.ref,
        target=Status.ACCEPTED,
        sources=allowed_sources(Status.ACCEPTED, revive=True) - {Status.ACCEPTED},
        expected_attempt=job.attempt,
        bump=True,
        due_at=None,  # it waits in its queue, not in the due index
        fields=fields,
        event=None,
        now=time.time() if now is None else now,
        requeue=True,
    )


def outcome(move: Move, code: int, status: str, attempt: int, finished: bool, previous: str) -> Applied:
    """The store's answer to `move`, counted in the metrics when it changed a status."""
    if code == 1 and previous != status:
        metrics.JOB_STATUS.labels(status=status).inc()
    reason = _REASONS.get(code, f"{status} cannot move to {move.target}" if code == -2 else "")
    return Applied(ok=code == 1, status=status, attempt=attempt, batch_finished=finished, reason=reason)


class Planned(ABC):
    """The transition operations of a store, from the plans above: a store gives `_apply`, which applies one
    `Move` atomically (and, for a revival, puts the job back in `model`'s wait queue)."""

    @abstractmethod
    def _apply(self, move: Move, *, model: str | None = None) -> Applied: ...

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
        move = plan(
            ref,
            target,
            expected_attempt=expected_attempt,
            next_action=next_action,
            due_at=due_at,
            fields=fields,
            event=event,
            now=now,
            bill=bill,
        )
        return self._apply(move)

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
        move = plan(
            ref,
            status,
            expected_attempt=expected_attempt,
            bump=True,
            next_action=action,
            due_at=lease_until,
            fields=fields,
            now=now,
        )
        return self._apply(move)

    def revive(self, job: Job, *, now: float | None = None) -> Applied:
        return self._apply(plan_revival(job, now=now), model=job.request.model)
