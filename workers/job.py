"""The job record: its statuses, the transitions allowed between them, and its typed view.

Status moves only along `TRANSITIONS`. The one way "back" is a resubmission (a transient upstream failure
sends a `submitted`/`running` job to `submitting` again), which the attempt counter keeps safe: every
action first *claims* the job by advancing `attempt`, so two deliveries of one message cannot both act.

Fields of `genq:job:{ref}` (all strings in Redis):
`batch_id`, `job_id`, `line`, `request` (JSON), `model`, `account` (whose slot it holds, from admission on),
`status`, `attempt`, `next_action`, `due_at`,
`deadline_at`, `task_id`, `request_id`, `submits` (creates sent), `create_pending` (1 while a create's outcome
is unknown), `submit_sent_at`,
`submit_failed_at` (when a create's answer was lost), `submit_errors`, `throttles`, `submitted_at`, `poll_count`,
`poll_errors`,
`poll_delay_s`, `results_at`, `finalize_errors`, `at_risk`, `created_at`, `t_{status}` (when it entered each status),
`submit_time` / `scheduled_time` / `end_time` (upstream, as the service wrote them), `results` (JSON: upstream
results), `usage` (JSON), `objects` (JSON: stored keys + sha256), `failures` (JSON: failed sub-results),
`error_code`, `error_message`, `task_status` (the upstream status last seen), `unknown_seen` and
`unknown_first_at` (UNKNOWN answers not yet believed), `cancel_refusals`, `stage_crashes` (unexpected
exceptions of its stages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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
    **{s: frozenset() for s in TERMINAL},
}


def allowed_sources(target: Status) -> frozenset[Status]:
    """The statuses from which `target` may be entered (including `target` itself, if not terminal)."""
    sources = {s for s, nexts in TRANSITIONS.items() if target in nexts}
    if target not in TERMINAL:
        sources.add(target)
    return frozenset(sources)


@dataclass(frozen=True)
class Job:
    """A typed, read-only view of one job record."""

    ref: str
    batch_id: str
    job_id: str
    line: int
    request: GenerationRequest
    status: Status
    attempt: int
    next_action: Action
    due_at: float
    deadline_at: float
    task_id: str | None = None
    account: str | None = None  # the account whose slot the job holds, from admission on
    submits: int = 0
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
    def from_hash(cls, ref: str, h: dict[str, str]) -> Job:
        def opt(name: str) -> str | None:
            value = h.get(name)
            return value if value else None

        def number(name: str) -> float:
            value = h.get(name)
            return float(value) if value else 0.0

        def maybe(name: str) -> float | None:
            value = h.get(name)
            return float(value) if value else None

        return cls(
            ref=ref,
            batch_id=h["batch_id"],
            job_id=h["job_id"],
            line=int(h.get("line", 0)),
            request=GenerationRequest.from_dict(json.loads(h["request"])),
            status=Status(h["status"]),
            attempt=int(h.get("attempt", 0)),
            next_action=Action(h.get("next_action", Action.NONE)),
            due_at=number("due_at"),
            deadline_at=number("deadline_at"),
            task_id=opt("task_id"),
            account=opt("account"),
            submits=int(h.get("submits", 0)),
            poll_count=int(h.get("poll_count", 0)),
            poll_errors=int(h.get("poll_errors", 0)),
            submit_errors=int(h.get("submit_errors", 0)),
            finalize_errors=int(h.get("finalize_errors", 0)),
            throttles=int(h.get("throttles", 0)),
            submitted_at=maybe("submitted_at"),
            submit_sent_at=maybe("submit_sent_at"),
            submit_failed_at=maybe("submit_failed_at"),
            results_at=maybe("results_at"),
            at_risk=h.get("at_risk") == "1",
            create_pending=h.get("create_pending") == "1",
            poll_delay_s=maybe("poll_delay_s"),
            created_at=number("created_at"),
            error_code=opt("error_code"),
            error_message=opt("error_message"),
            results=json.loads(h.get("results") or "[]"),
            objects=json.loads(h.get("objects") or "[]"),
            failures=json.loads(h.get("failures") or "[]"),
            usage=json.loads(h.get("usage") or "{}"),
            task_status=h.get("task_status", ""),
            unknown_seen=int(h.get("unknown_seen") or 0),
            unknown_first_at=maybe("unknown_first_at"),
            cancel_refusals=int(h.get("cancel_refusals") or 0),
            upstream={k: h[k] for k in ("submit_time", "scheduled_time", "end_time") if h.get(k)},
            times={k[2:]: float(v) for k, v in h.items() if k.startswith("t_") and v},
        )
