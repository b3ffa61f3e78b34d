"""The end-of-run audit, from the outside: what the simulator says it created and served, what the job store
says happened, what the bucket holds, what the event stream carries, and what a webhook receiver verified with
the `standardwebhooks` package. Nothing here asks genq's workers.

Upstream tasks are matched to jobs by prompt (each chaos prompt is unique). A job may own several tasks when
genq resubmitted after a task that FAILED transiently; such a task is *justified* when the one before it had
already ended FAILED when it was created. Every other extra task, and every task no job owns, is a
*duplicate*: work created twice, the thing genq promises never to do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from config.settings import Settings
from ops.webhook_receiver import VerifyingReceiver
from workers.bucket import make_minio
from workers.job import TERMINAL, Job, Status
from workers.jobstore import keys
from workers.quota.quota import Quota, Scope
from workers.runtime import make_quota, make_redis, make_store

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Check:
    what: str
    found: str
    expected: str
    ok: bool


@dataclass
class Audit:
    checks: list[Check] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # "status / code" -> jobs
    problems: list[str] = field(default_factory=list)  # one line per job or object that failed a check
    injected: Counter[str] = field(default_factory=Counter)  # what the simulator did: faults fired, 429s
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, what: str, found: int, expected: int | None = None, *, of: int | None = None) -> None:
        """A row: `found` must equal `expected` (when given); `of` shows it as "found of total"."""
        shown = f"{found} of {of}" if of is not None else str(found)
        self.checks.append(Check(what, shown, "-" if expected is None else str(expected), expected in {None, found}))
        self.figures[what] = found

    def at_most(self, what: str, found: int, limit: int) -> None:
        """A row: `found` may be anything up to `limit`."""
        self.checks.append(Check(what, str(found), f"at most {limit}", found <= limit))
        self.figures[what] = found

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            "outcomes": dict(self.outcomes),
            "problems": self.problems,
            "injected": dict(self.injected),
        }


def audit_run(
    settings: Settings, simulator_url: str, batch_id: str, rows: list[dict[str, str]], receiver: VerifyingReceiver
) -> Audit:
    store = make_store(settings)
    jobs = {job.job_id: job for job in store.jobs(batch_id)}
    tasks = httpx.get(f"{simulator_url}/_sim/tasks", timeout=60).json()["tasks"]
    counters = httpx.get(f"{simulator_url}/_sim/counters", timeout=60).json()
    audit = Audit()
    audit.injected.update(counters["faults_fired"])
    audit.injected.update({k: v for k, v in counters["counters"].items() if k.startswith("throttled_")})
    _jobs(audit, rows, jobs)
    _upstream(audit, rows, jobs, tasks, counters)
    _objects(audit, settings, batch_id, jobs, tasks)
    _billed(audit, jobs, tasks)
    _reasons(audit, jobs.values())
    _deadlines(audit, jobs.values(), tasks)
    _slots(audit, settings)
    _events(audit, settings, make_redis(settings), jobs.values(), receiver)
    return audit


def _jobs(audit: Audit, rows: list[dict[str, str]], jobs: dict[str, Job]) -> None:
    terminal = [j for j in jobs.values() if j.status in TERMINAL]
    audit.add("jobs accepted", len(jobs), len(rows), of=len(rows))
    audit.add("jobs terminal", len(terminal), len(jobs), of=len(jobs))
    lost = [r["id"] for r in rows if r["id"] not in jobs or jobs[r["id"]].status not in TERMINAL]
    audit.add("jobs lost (no record, or not terminal)", len(lost), 0)
    audit.problems += [f"lost: {job_id} ({jobs[job_id].status if job_id in jobs else 'no record'})" for job_id in lost]
    audit.add("jobs whose results waited for S3 (finalize retried)", sum(1 for j in jobs.values() if j.finalize_errors))
    for job in jobs.values():
        audit.outcomes[f"{job.status.value} / {job.error_code}" if job.error_code else job.status.value] += 1


def _upstream(
    audit: Audit,
    rows: list[dict[str, str]],
    jobs: dict[str, Job],
    tasks: list[dict[str, Any]],
    counters: dict[str, Any],
) -> None:
    job_of_prompt = {r["prompt"]: r["id"] for r in rows}
    owned: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    orphans = 0
    for task in tasks:
        job_id = job_of_prompt.get(task["prompt"])
        if job_id is None:
            orphans += 1
            audit.problems.append(f"duplicate: task {task['task_id']} matches no job")
        else:
            owned[job_id].append(task)
    justified = duplicates = paid_twice = 0
    for job_id, mine in owned.items():
        mine.sort(key=lambda t: t["created"])
        for before, after in itertools.pairwise(mine):
            if before["failure_code"] and before["end"] is not None and before["end"] <= after["created"]:
                justified += 1
            else:
                duplicates += 1
                audit.problems.append(f"duplicate: job {job_id}: {after['task_id']} while {before['task_id']} lived")
        if sum(1 for t in mine if t["status"] == "SUCCEEDED") > 1:
            paid_twice += 1
            audit.problems.append(f"paid twice: job {job_id}")
    # A job must follow the newest task made from its own request (not another job's, which would store the
    # wrong images under it).
    astray = [
        j for j in jobs.values() if j.task_id and (not owned[j.job_id] or owned[j.job_id][-1]["task_id"] != j.task_id)
    ]
    audit.problems += [f"job {j.job_id} follows task {j.task_id}, not the newest of its own" for j in astray]
    audit.add("upstream tasks created", len(tasks), counters["counters"].get("creates", 0))
    audit.add("jobs that reached the service", len(owned), of=len(jobs))
    audit.add("resubmissions after a FAILED task", justified)
    audit.add("duplicate upstream creates", duplicates + orphans, 0)
    audit.add("jobs with two succeeded tasks (paid twice)", paid_twice, 0)
    audit.add("jobs following a task other than their own newest", len(astray), 0)


def _deadlines(audit: Audit, jobs: Iterable[Job], tasks: list[dict[str, Any]]) -> None:
    """Past a deadline genq cancels a PENDING task and waits for a RUNNING one (it will be billed): when every job
    has ended, no task may still be waiting or running upstream (none was abandoned)."""
    running = [t for t in tasks if t["status"] in {"PENDING", "RUNNING"}]
    audit.problems += [f"abandoned: task {t['task_id']} still {t['status']} upstream" for t in running]
    audit.add(
        "jobs overdue (their deadline passed while the task ran upstream)", sum(1 for j in jobs if "overdue" in j.times)
    )
    audit.add(
        "tasks canceled upstream (PENDING at their job's deadline)", sum(1 for t in tasks if t["status"] == "CANCELED")
    )
    audit.add("tasks still pending or running upstream after every job ended", len(running), 0)


def _newest(tasks: list[dict[str, Any]] | None) -> str | None:
    return str(tasks[-1]["task_id"]) if tasks else None


def _objects(
    audit: Audit, settings: Settings, batch_id: str, jobs: dict[str, Job], tasks: list[dict[str, Any]]
) -> None:
    served = {f"{t['task_id']}/{i}": digest for t in tasks for i, digest in t["served_sha256"].items()}
    minio = make_minio(settings)
    stored = {
        o.object_name
        for o in minio.list_objects(settings.bucket, prefix=f"{batch_id}/", recursive=True)
        if o.object_name and not o.object_name.endswith(MANIFEST)
    }
    reported = {
        obj["key"]: (job, obj)
        for job in jobs.values()
        if job.status in {Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED}
        for obj in job.objects
    }
    verified = 0
    for key, (job, obj) in sorted(reported.items()):
        if key not in stored:
            audit.problems.append(f"missing: {key} reported stored by {job.ref}")
            continue
        response = minio.get_object(settings.bucket, key)
        try:
            actual = hashlib.sha256(response.read()).hexdigest()
        finally:
            response.close()
            response.release_conn()
        upstream = served.get(_url_key(job.results[int(obj["index"])].get("url", "")))
        if actual == obj["sha256"] == upstream:
            verified += 1
        else:
            audit.problems.append(f"sha256: {key} stored {actual}, reported {obj['sha256']}, served {upstream}")
    audit.add("images reported succeeded", len(reported))
    audit.add("objects in the bucket", len(stored), len(reported))
    audit.add("objects with sha256 = reported = served upstream", verified, len(reported), of=len(reported))
    audit.problems += [f"unreported object: {key}" for key in sorted(stored - reported.keys())]


#: Sub-results genq refuses to fetch on purpose (the URL is unsafe or not the service's): paid, not lost by fault.
_REFUSED_ON_PURPOSE = frozenset({"ResultUrlMalformed", "ResultHostNotAllowed", "ResultUrlScheme"})


def _billed(audit: Audit, jobs: dict[str, Job], tasks: list[dict[str, Any]]) -> None:
    """Every image the service billed (each of a SUCCEEDED task, failed sub-images aside) is stored by the job
    that owns the task, or refused on purpose, or was forgotten by the service itself (`task_expire` stands in
    for a task past its 24 h); anything else is a billed result genq lost."""
    by_task = {job.task_id: job for job in jobs.values() if job.task_id}
    billed = lost = refused = forgotten = 0
    for task in tasks:
        if task["status"] != "SUCCEEDED":
            continue
        indexes = [i for i in range(int(task["n"])) if i not in set(task["failed_indices"])]
        billed += len(indexes)
        if task.get("forgotten"):
            forgotten += len(indexes)
            continue
        job = by_task.get(task["task_id"])
        stored = {int(o["index"]) for o in job.objects} if job else set()
        named = {int(f["index"]): f.get("code") for f in (job.failures if job else []) if "index" in f}
        for index in indexes:
            if index in stored:
                continue
            if named.get(index) in _REFUSED_ON_PURPOSE:
                refused += 1
                continue
            lost += 1
            owner = job.ref if job else "no job"
            audit.problems.append(f"billed image lost: task {task['task_id']} #{index} ({owner})")
    audit.add("images billed by the service", billed)
    audit.add("billed images lost", lost, 0)
    audit.add("billed images refused on purpose (malformed or disallowed URL)", refused)
    audit.add("billed images the service forgot (task_expire: past its 24 h)", forgotten)


def _url_key(url: str) -> str:
    """`task_id/index` of a simulator result URL (`/results/{task_id}/{index}.png?...`)."""
    path = urlsplit(url).path.removeprefix("/results/")
    return path.rpartition(".")[0]


def _reasons(audit: Audit, jobs: Iterable[Job]) -> None:
    """Every job that ended without all its results says why: a code and a message (per sub-result too), and
    every image asked for is either stored or named as failed."""
    with_reason = without = short = 0
    for job in jobs:
        if job.status in {Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED} and (
            len(job.objects) + len(job.failures) != job.request.n
        ):
            short += 1  # an image asked for is neither stored nor named as failed
            audit.problems.append(f"images unaccounted: {job.ref} asked {job.request.n}, {len(job.objects)} stored")
        if job.status is Status.SUCCEEDED or job.status not in TERMINAL:
            continue
        if job.status is Status.PARTIALLY_SUCCEEDED:
            reasoned = bool(job.failures) and all(f.get("code") and f.get("message") for f in job.failures)
        else:
            reasoned = bool(job.error_code and job.error_message)
        if reasoned:
            with_reason += 1
        else:
            without += 1
            audit.problems.append(f"no reason: {job.ref} ended {job.status.value}")
    audit.add("jobs failed (or partly) with a code and message", with_reason)
    audit.add("jobs failed without a reason", without, 0)
    audit.add("jobs with images neither stored nor named failed", short, 0)


def held_slots(settings: Settings, quota: Quota) -> list[str]:
    """Every job ref holding a slot now, over every account and catalogue model."""
    now = time.time()
    return [
        ref
        for account in settings.resolved_accounts()
        for model in settings.catalogue
        for ref in quota.slot_holders(Scope(account.name, model), now)
    ]


def _slots(audit: Audit, settings: Settings) -> None:
    held = held_slots(settings, make_quota(settings))
    audit.add("slots left held", len(held), 0)
    audit.problems += [f"slot still held by {ref}" for ref in held]


def _events(audit: Audit, settings: Settings, redis: Any, jobs: Iterable[Job], receiver: VerifyingReceiver) -> None:
    """Every entry `genq:events` ever held (XINFO's entries-added) was delivered to the receiver, verified by the
    `standardwebhooks` package, or is in the dead-letter stream with its reason (entries trimmed before anyone
    read them: counted in a gap record); never both. Every terminal job has exactly one terminal event among
    those the stream, the receiver and the dead letters still show, or its event was trimmed unread."""
    delivered: dict[str, dict[str, Any]] = {}
    for event in receiver.accepted:
        delivered.setdefault(str(event["id"]), event)
    dead_ids: set[str] = set()
    bodies: dict[str, dict[str, Any]] = dict(delivered)
    reasons: Counter[str] = Counter()
    trimmed_unread = dead_entries = 0
    for _, letter in redis.xrange(keys.WEBHOOK_DEAD):
        reasons[letter.get("reason", "?")] += 1
        if "missing" in letter:  # a gap: entries trimmed before anyone read them
            if letter["missing"].isdigit():
                trimmed_unread += int(letter["missing"])
            else:
                audit.problems.append(f"dead letter of a gap of unknown size: {letter}")
            continue
        dead_entries += 1
        found = _event_of(letter.get("event"))
        if found is not None:
            dead_ids.add(str(found["id"]))
            bodies.setdefault(str(found["id"]), found)
    for _, entry in redis.xrange(settings.event_stream):
        found = _event_of(entry.get("event"))
        if found is not None:
            bodies.setdefault(str(found["id"]), found)
    added = int(redis.xinfo_stream(settings.event_stream)["entries-added"])
    both = dead_ids & delivered.keys()
    audit.problems += [f"event {event_id} both delivered and dead-lettered" for event_id in sorted(both)]
    audit.add("event stream entries ever added", added)
    audit.add("events delivered to the webhook (verified by standardwebhooks)", len(delivered))
    audit.add(
        "webhook deliveries repeated (at least once: a retry after a lost answer)",
        len(receiver.accepted) - len(delivered),
    )
    audit.add("webhook deliveries the standardwebhooks verifier refused", len(receiver.refused), 0)
    for reason, count in sorted(reasons.items()):
        audit.add(f"dead letters: {reason}", count)
    audit.add("events trimmed before any reader saw them (counted in gap records)", trimmed_unread)
    unaccounted = added - len(delivered) - dead_entries - trimmed_unread + len(both)
    audit.add("events neither delivered nor dead-lettered", unaccounted, 0)
    audit.add("events both delivered and dead-lettered", len(both), 0)
    audit.add("events still waiting in the webhook outbox", int(redis.zcard(keys.WEBHOOK_DUE)), 0)

    terminal_types = {f"genq.job.{s.value}" for s in TERMINAL}
    per_job: Counter[str] = Counter(str(e["subject"]) for e in bodies.values() if e.get("type") in terminal_types)
    terminal = [j for j in jobs if j.status in TERMINAL]
    unseen = [j for j in terminal if per_job[j.ref] == 0]
    several = [j for j in terminal if per_job[j.ref] > 1]
    exactly_one = len(terminal) - len(unseen) - len(several)
    audit.add("terminal jobs with exactly one event", exactly_one, len(terminal) - len(unseen), of=len(terminal))
    audit.add("terminal jobs with more than one terminal event", len(several), 0)
    audit.at_most("terminal jobs whose event was trimmed unread (no body left anywhere)", len(unseen), trimmed_unread)
    audit.problems += [f"events: {j.ref} has {per_job[j.ref]}" for j in several]
    if len(unseen) > trimmed_unread:
        audit.problems += [f"events: no terminal event seen for {j.ref}" for j in unseen]


def _event_of(raw: str | None) -> dict[str, Any] | None:
    """The event in a stream entry's or dead letter's `event` field, or None when it is not an event object."""
    try:
        event = json.loads(raw) if raw else None
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("id"), str) else None
