"""The job record: its statuses, the transitions allowed between them, and its typed view.

Status moves only along `TRANSITIONS`. The one way "back" is a resubmission (a transient upstream failure
sends a `submitted`/`running` job to `submitting` again), which the attempt counter keeps safe: every
action first *claims* the job by advancing `attempt`, so two deliveries of one message cannot both act.

The record's fields are `Job`'s own, one per dataclass field (each commented where it is declared), plus
`t_{status}` (when it entered each status, `Job.times`) and the service's own `submit_time` /
`scheduled_time` / `end_time` (`Job.upstream`). `record_of` writes a new job from them, `Job.from_record` reads
one back, and `PER_TRY` names those a revived job starts afresh: the list is written once, here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from workers.refs import split_ref
from workers.requests import GenerationRequest


class Status(StrEnum):
    ACCEPTED = "accepted"
    ADMITTED = "admitted"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    OVERDUE = "overdue"  # past its deadline while its task runs on upstream (billed): polled until it ends
    DOWNLOADING = "downloading"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"


class Action(StrEnum):
    """The next thing that must happen to a job; `NONE` once terminal."""

    ADMIT = "admit"
    SUBMIT = "submit"
    POLL = "poll"
    FINALIZE = "finalize"
    CALL = "call"  # a synchronous model's one call, on its own lane (workers/call.py)
    NONE = "none"


@dataclass(frozen=True)
class Next:
    """Send `action` for `ref` carrying `attempt`, after `delay_s`: what a stage asks Celery to do next."""

    action: Action
    ref: str
    attempt: int
    delay_s: float = 0.0


TERMINAL = frozenset(
    {
        Status.SUCCEEDED,
        Status.PARTIALLY_SUCCEEDED,
        Status.FAILED,
        Status.CANCELED,
        Status.EXPIRED,
        Status.TIMED_OUT,
        Status.REJECTED,
    }
)
_ENDINGS = {Status.FAILED, Status.CANCELED, Status.TIMED_OUT}
#: Ended statuses from which `genq retry` may bring a job back to `accepted` (the only way out of an ending).
REVIVABLE = frozenset({Status.FAILED, Status.TIMED_OUT, Status.EXPIRED})
#: The service keeps a task (and answers for it) 24 h; after that UNKNOWN is all it says of it.
TASK_LIFE_S = 24 * 3600.0
#: Upstream statuses after which a task does nothing more (and bills nothing more). Not UNKNOWN: for a task
#: younger than 24 h it may mean only that the service cannot tell, and the task may run on.
UPSTREAM_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})

#: status -> the statuses it may move to. Staying in the same status is allowed for reschedules.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.ACCEPTED: frozenset({Status.ADMITTED, *_ENDINGS}),
    Status.ADMITTED: frozenset({Status.SUBMITTING, *_ENDINGS}),
    Status.SUBMITTING: frozenset({Status.SUBMITTED, *_ENDINGS}),
    Status.SUBMITTED: frozenset(
        {Status.RUNNING, Status.OVERDUE, Status.DOWNLOADING, Status.SUBMITTING, Status.EXPIRED, *_ENDINGS}
    ),
    Status.RUNNING: frozenset({Status.OVERDUE, Status.DOWNLOADING, Status.SUBMITTING, Status.EXPIRED, *_ENDINGS}),
    # Never back to SUBMITTING: a job past its deadline is not sent again while its task may still run.
    Status.OVERDUE: frozenset({Status.DOWNLOADING, Status.EXPIRED, *_ENDINGS}),
    Status.DOWNLOADING: frozenset({Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED, Status.FAILED, Status.TIMED_OUT}),
    # `genq retry`: an ended job whose failure a new try may cure goes back in line (`REVIVABLE`).
    **{s: frozenset({Status.ACCEPTED}) if s in REVIVABLE else frozenset() for s in TERMINAL},
}


def allowed_sources(target: Status, *, revive: bool = False) -> frozenset[Status]:
    """The statuses from which `target` may be entered (including `target` itself, if not terminal). A move out
    of an ending is a revival, allowed only to a caller that says so (`revive`), which resets the job's try."""
    sources = {s for s, nexts in TRANSITIONS.items() if target in nexts and (revive or s not in TERMINAL)}
    if target not in TERMINAL:
        sources.add(target)
    return frozenset(sources)


@dataclass(frozen=True)
class Job:
    """A typed, read-only view of one job record."""

    ref: str  # `{batch_id}/{job_id}`: the record's name, not a field of it
    batch_id: str
    job_id: str
    request: GenerationRequest  # the validated request (JSON in the record)
    status: Status
    line: int = 0  # its line in the source file (0: it came from a stream)
    attempt: int = 0  # advanced by every claim: a message carrying an older one finds the job moved on
    next_action: Action = Action.NONE
    due_at: float = 0.0  # when `next_action` is due (a lease while it runs); indexed for the recovery sweep
    deadline_at: float = 0.0  # set at admission
    model: str = ""  # the request's model (kept apart so the store's scripts can count tasks per model)
    task_id: str | None = None
    request_id: str | None = None  # the service's id of the create that made the task
    account: str | None = None  # the account whose slot the job holds, from admission on
    submits: int = 0  # creates sent
    poll_count: int = 0
    poll_errors: int = 0
    submit_errors: int = 0
    finalize_errors: int = 0
    throttles: int = 0
    submitted_at: float | None = None
    submit_sent_at: float | None = None
    submit_failed_at: float | None = None
    results_at: float | None = None  # when the upstream results (and their 24 h URLs) were received
    at_risk: bool = False  # the at-risk alarm was raised for this job's results
    create_pending: bool = False  # a create was sent and its outcome is not known yet
    poll_delay_s: float | None = None
    created_at: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # sub-results not stored: index, code, message
    usage: dict[str, Any] = field(default_factory=dict)
    task_status: str = ""  # the upstream status last seen ("" before the first answer)
    unknown_seen: int = 0
    unknown_first_at: float | None = None
    cancel_refusals: int = 0  # cancels at the deadline refused while the task was answered PENDING
    stage_crashes: int = 0  # unexpected exceptions of its stages (`claimed.run_stage`)
    retries: int = 0  # times `genq retry` revived it
    billed_units: float = 0.0  # what the service billed for its tasks, over every try (`workers/billing.py`)
    billed_origin: str = ""  # the task (or call) last billed: a second record of its answer counts nothing
    last_error_code: str | None = None  # the transient task failure that made it resubmit
    last_error_message: str | None = None
    upstream: dict[str, str] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def task_may_run(self, now: float) -> str | None:
        """Why a task of this job may still run (and bill) upstream, or None when none can: a task whose last
        answer was not final, or a create whose outcome was never known, younger than the service's 24 h."""
        if self.task_id and self.task_status not in UPSTREAM_FINAL and now - (self.submitted_at or 0) < TASK_LIFE_S:
            return (
                f"its task {self.task_id} may still run upstream (last seen {self.task_status or 'not yet answered'})"
            )
        if self.create_pending and now - (self.submit_sent_at or 0) < TASK_LIFE_S:
            return "a create was sent whose outcome is unknown: a task of it may run upstream"
        return None

    @classmethod
    def from_record(cls, ref: str, record: Mapping[str, str]) -> Job:
        """The job stored as `record` (every value a string, as Redis keeps them; missing ones take defaults)."""
        values: dict[str, Any] = {"ref": ref}
        for name, decode in _FIELD_DECODERS:
            raw = record.get(name)
            if raw is not None:
                values[name] = decode(raw)
        values["upstream"] = {k: record[k] for k in UPSTREAM_TIMES if record.get(k)}
        values["times"] = {k[2:]: float(v) for k, v in record.items() if k.startswith("t_") and v}
        return cls(**values)


#: The service's own timestamps of a task, kept as it wrote them.
UPSTREAM_TIMES = ("submit_time", "scheduled_time", "end_time")
#: Fields a revived job starts afresh (its new try owes nothing to the last one), at their defaults.
PER_TRY = (
    "task_id",
    "create_pending",
    "submit_errors",
    "poll_errors",
    "finalize_errors",
    "submits",
    "error_code",
    "error_message",
    "results",
    "at_risk",
    "task_status",
    "unknown_seen",
    "unknown_first_at",
    "cancel_refusals",
    "stage_crashes",
)
_RECORD_FIELDS = [f for f in fields(Job) if f.name not in {"ref", "upstream", "times"}]


def settable_field(name: str) -> bool:
    """Whether a change of the job may set `name`: a field of the record (one of `Job`'s, or a service
    timestamp) that is neither the move's own (status, attempt, next action, due time, `t_{status}`: the store
    writes those with their indexes and counters) nor fixed at creation (ids, line, request, model)."""
    return (name in _FIELD_NAMES or name in UPSTREAM_TIMES) and name not in _NOT_SETTABLE


_FIELD_NAMES = frozenset(f.name for f in _RECORD_FIELDS)
#: Written by the store with the move (a caller's value would defeat the compare-and-set or the counters), or
#: once, when the job is created.
_NOT_SETTABLE = frozenset(
    {
        "status",
        "attempt",
        "next_action",
        "due_at",
        "batch_id",
        "job_id",
        "line",
        "request",
        "model",
        "created_at",
        "billed_units",  # added with a bill, once per origin
        "billed_origin",
    }
)


#: How a record's string becomes each field type (annotations are strings: `from __future__ import annotations`).
_DECODERS: dict[str, Callable[[str], Any]] = {
    "str": lambda raw: raw,
    "str | None": lambda raw: raw or None,
    "int": lambda raw: int(raw or 0),
    "float": lambda raw: float(raw) if raw else 0.0,
    "float | None": lambda raw: float(raw) if raw else None,
    "bool": lambda raw: raw == "1",
    "Status": Status,
    "Action": lambda raw: Action(raw or Action.NONE),
    "GenerationRequest": lambda raw: GenerationRequest.from_dict(json.loads(raw)),
    "list[dict[str, Any]]": lambda raw: json.loads(raw or "[]"),
    "dict[str, Any]": lambda raw: json.loads(raw or "{}"),
}
#: Each record field with its decoder, resolved once at import (a field of a type with no decoder fails here).
_FIELD_DECODERS = [(f.name, _DECODERS[str(f.type)]) for f in _RECORD_FIELDS]


def encode(value: Any) -> str:
    """A value as the store keeps it: JSON for structures, '' for None, 1/0 for booleans."""
    if isinstance(value, GenerationRequest):
        value = value.to_dict()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def per_try_reset() -> dict[str, str]:
    """`PER_TRY` at their defaults, encoded."""
    defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(Job)}
    return {name: encode(defaults[name]) for name in PER_TRY}


def record_of(ref: str, line: int, request: GenerationRequest, now: float) -> dict[str, str]:
    """The record of a new job, waiting in its model's queue for a slot."""
    batch_id, job_id = split_ref(ref)
    record = {
        "batch_id": batch_id,
        "job_id": job_id,
        "line": line,
        "request": request,
        "model": request.model,
        "status": Status.ACCEPTED,
        "attempt": 0,
        "next_action": Action.ADMIT,
        "due_at": None,
        "created_at": now,
        f"t_{Status.ACCEPTED}": now,
    }
    return {name: encode(value) for name, value in record.items()}
