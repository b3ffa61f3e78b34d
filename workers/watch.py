"""One query that speaks for many tasks: the account's task list, read by one watcher per account.

Polling each task on its own cannot notice an end within a second without spending many queries per task.
The service's task list (`GET /tasks` with a time window, `dashscope-api.md`) gives the status of every task
of the account in one answer (no result URLs: those still take one query of the task). So while any task of
the account is in flight, one watcher (`genq.watch`, on the poll queue) reads the list every
`watch_interval_s`, and for each task of ours that it shows ended (SUCCEEDED, FAILED or CANCELED) sends that
job's poll at once, carrying the job's current attempt: the poll claims the attempt, queries the task and
records its end; the job's own scheduled poll then finds its attempt moved on and does nothing. A job still
`submitted` whose task the list shows RUNNING is moved to `running` (its poll stays due when it was, carried by
a fresh message), so that `genq status` shows what runs without a query spent on it.

It lists only when an end is plausible: no task of the account can have ended before its start plus the
shortest run the scope has shown (the learned run time's 0.5 % quantile, `workers/quota/durations.py`; with
nothing learned yet, any moment may be an end); before that the watcher sleeps. Lists draw on a share of the
account's query budget reserved for them (`LIST_SHARE`; polls get the rest, so neither starves the other), or on
`task_list_qps` when the service gives the list a budget of its own. Page after page (newest first, so the
oldest tasks are on the last page: every page of the window is read, each waiting for its own query), it reads
the window from the oldest task in flight (less `WINDOW_SKEW_S`) to now, at most `MAX_PAGES` pages a round.
Tasks created more than `HORIZON_S` ago are left to their own polls (a stuck task must not hold the window
open for hours), and those polls do not count on the watcher.

A list that says a task ended while the task's own query says it has not (the two may disagree for a moment)
sends the task's poll again only after a backoff (`RESEND_BACKOFF_S`, doubling), not every round.

What genq trusts, and what happens without it:
- the list's `status` of a task: an end it shows sends the task's poll; the poll's own answer is what is
  recorded, so a list that is wrong costs one query, never a result;
- a task missing from the list, or a list that fails: nothing is concluded. Polls of the account see the
  watcher's last good round (`ok_at`) grow old and go back to their own schedule (`workers/poll_policy.py`)
  within `WATCHED_FOR_S`; the watcher tries again with a backoff;
- an account in throttle mode has no queue upstream, and nothing changes here: the list shows ends the same way.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass

import redis
import structlog

from config.accounts import AccountSettings
from workers import metrics
from workers.admission import HOLDS_SLOT
from workers.claimed import reschedule
from workers.dashscope.protocol import list_time, upstream_epoch
from workers.errors import RemoteError
from workers.job import UPSTREAM_FINAL, Action, Job, Next, Status
from workers.quota.budget import QUERY_SAFETY, list_qps, task_query_qps
from workers.quota.quota import scopes_of
from workers.quota.watch_board import Sent
from workers.runtime import Runtime

log = structlog.get_logger("genq.watch")

#: A watcher that stops renewing (its worker died) is replaced after this long (by the sweep, every 5 s, or the
#: next poll of the account).
LEASE_S = 10.0
#: The longest a watcher sleeps while no end is plausible: a task admitted meanwhile is looked at by then.
MAX_SLEEP_S = 3.0
#: Polls count the account as watched while the watcher's last good round is this recent.
WATCHED_FOR_S = MAX_SLEEP_S + 3.0
#: Tasks created longer ago than this are left to their own polls (an overdue task, a stuck one).
HORIZON_S = 900.0
#: The list's window starts this long before the oldest task in flight (and ends this long after now): its
#: times are whole seconds on the service's clock, which may disagree a little with ours. Every second more
#: brings tasks long finished into the window, and pages to read.
WINDOW_SKEW_S = 5.0
PAGE_SIZE = 100
MAX_PAGES = 5
#: The longest a round waits for the list's budget to read one more page.
PAGE_WAIT_MAX_S = 1.0
#: A run's shortest plausible length: this quantile of the learned run time.
EARLIEST_END_QUANTILE = 0.005
#: After a failed list, the next try waits this long (doubling per failure in a row, up to the cap).
RETRY_S, RETRY_CAP_S = 2.0, 60.0
#: A task the list shows ended, whose poll was sent and answered otherwise, is sent again after this long
#: (doubling each time), not every round.
RESEND_BACKOFF_S = 2.0


@dataclass(frozen=True)
class InFlight:
    job: Job
    earliest_end_at: float  # before this the task cannot have ended


@dataclass(frozen=True)
class NextRound:
    delay_s: float
    round_no: int
    failures: int = 0


def watching(rt: Runtime, account: str, now: float) -> bool:
    """Make sure the account's task list is watched (start a watcher if none holds the lease); whether per-task
    polls may count on it (its last good round is recent). Never raises: a watcher that cannot be started
    leaves the polls to themselves, and the next poll or sweep tries again."""
    if not rt.settings.watch_task_list:
        return False
    token = secrets.token_hex(8)
    try:
        started, ok_at = rt.watch_board.claim(account, token, LEASE_S)
    except redis.RedisError as exc:
        log.warning("could not look at the task-list watcher", account=account, error=type(exc).__name__)
        return False
    if started:
        try:
            rt.start_watch(account, token)
        except Exception as exc:  # the broker away for a moment: the poll's own answer matters more
            log.warning("could not start the task-list watcher", account=account, error=type(exc).__name__)
            with contextlib.suppress(redis.RedisError):
                rt.watch_board.leave(account, token)  # else the lease lapses by itself
            return False
    return ok_at is not None and now - ok_at <= WATCHED_FOR_S


def watched_task(job: Job, now: float) -> bool:
    """Whether the watcher's list covers this job's task (not one left to its own polls)."""
    return now - (job.submitted_at or now) <= HORIZON_S


def keep_watching(rt: Runtime, now: float) -> int:
    """The sweep's part: make sure every account with tasks in flight is watched (a watcher whose worker died is
    replaced as soon as its lease lapses, not only at the next poll). Returns the accounts looked at."""
    looked = 0
    for account in rt.settings.resolved_accounts():
        if any(rt.quota.slots_held(scopes_of(account, rt.settings.catalogue), now).values()):
            watching(rt, account.name, now)
            looked += 1
    return looked


def budget_for_polls(rt: Runtime, account: str) -> float:
    """The queries per second task polls of `account` may count on (after the safety margin)."""
    return task_query_qps(rt.settings, rt.settings.account_settings(account)) * QUERY_SAFETY


def watch_round(rt: Runtime, account: str, token: str, *, round_no: int = 0, failures: int = 0) -> NextRound | None:
    """One round of the account's watcher: when the next is due, or None to stop (the watcher is not this one,
    this round already ran, or nothing of the account is in flight)."""
    now = rt.clock()
    state = rt.watch_board.read(account)
    if state.token != token or state.round != round_no:
        return None  # another watcher holds the account, or this round's message came twice

    def hold(ok_at: float | None, sent: dict[str, Sent]) -> bool:
        return rt.watch_board.hold(account, token, round_no, LEASE_S, ok_at=ok_at, sent=sent)

    flying = in_flight(rt, account, now)
    if not flying:
        rt.watch_board.leave(account, token)
        return None
    earliest = min(f.earliest_end_at for f in flying)
    if earliest > now + rt.settings.watch_interval_s:
        # Nothing can have ended yet: a good round all the same (polls may still count on the watcher).
        return NextRound(min(MAX_SLEEP_S, earliest - now), round_no + 1) if hold(now, state.sent) else None
    settings = rt.settings.account_settings(account)
    wait_s = rt.quota.list_wait_s(account, list_qps(rt.settings, settings), now, rt.rng)
    if wait_s > 0:
        return NextRound(wait_s, round_no + 1, failures) if hold(None, state.sent) else None
    start = min(f.job.submitted_at or now for f in flying) - WINDOW_SKEW_S
    try:
        statuses = _listed(rt, settings, start, now)
    except RemoteError as exc:
        failures += 1
        log.warning("task list failed; polls go on by themselves", account=account, code=exc.code, failures=failures)
        delay_s = min(RETRY_CAP_S, RETRY_S * 2 ** (failures - 1))
        return NextRound(delay_s, round_no + 1, failures) if hold(None, state.sent) else None
    sent = _send_ended(rt, flying, statuses, state.sent, now)
    _mark_running(rt, flying, statuses, now)
    return NextRound(rt.settings.watch_interval_s, round_no + 1) if hold(now, sent) else None


def in_flight(rt: Runtime, account: str, now: float) -> list[InFlight]:
    """The account's jobs whose task is upstream (created within `HORIZON_S`) and whose next action is a poll,
    with when each could end."""
    found = []
    for scope in scopes_of(rt.settings.account_settings(account), rt.settings.catalogue):
        holders = rt.quota.slot_holders(scope, now)
        if not holders:
            continue
        run = rt.durations.learned(account, scope.model, rt.settings.spec(scope.model).kind, now).run
        # The prior is a guess from the pages: until the scope has shown its own runs, any moment may be an end.
        shortest_s = run.quantile(EARLIEST_END_QUANTILE) if run.learned else 0.0
        for ref in holders:
            job = rt.store.get(ref)
            if job is None or not job.task_id or job.status not in HOLDS_SLOT or job.next_action is not Action.POLL:
                continue
            if not watched_task(job, now):
                continue
            started_at = upstream_epoch(job.upstream.get("scheduled_time", "")) or job.submitted_at or now
            found.append(InFlight(job, started_at + shortest_s))
    return found


def _listed(rt: Runtime, account: AccountSettings, start: float, now: float) -> dict[str, str]:
    """task_id -> status over the window, page by page (each page after the first takes its own query)."""
    statuses: dict[str, str] = {}
    client = rt.client(account.name)
    for page in range(1, MAX_PAGES + 1):
        # The first page's query was taken by the round. Pages come newest first, so the oldest tasks (the likeliest
        # to have ended) are on the last one: a round that stopped early would never see them. So each further
        # page waits for its query (a few tens of milliseconds), unless the budget is spent for longer.
        if page > 1 and not _await_list_query(rt, account):
            break
        try:
            tasks, pages = client.list_tasks(
                start_time=list_time(start), end_time=list_time(now + WINDOW_SKEW_S), page_no=page, page_size=PAGE_SIZE
            )
        except RemoteError:
            metrics.TASK_LISTS.labels(account=account.name, outcome="failed").inc()
            raise
        metrics.TASK_LISTS.labels(account=account.name, outcome="ok").inc()
        statuses.update((t.task_id, t.status) for t in tasks)
        if page >= pages or not tasks:
            break
    return statuses


def _await_list_query(rt: Runtime, account: AccountSettings) -> bool:
    """Take one query of the lists' budget, sleeping for it up to `PAGE_WAIT_MAX_S`; False when not had by then."""
    waited_s = 0.0
    while (wait_s := rt.quota.list_wait_s(account.name, list_qps(rt.settings, account), rt.clock(), rt.rng)) > 0:
        if waited_s + wait_s > PAGE_WAIT_MAX_S:
            return False
        time.sleep(wait_s)
        waited_s += wait_s
    return True


def _mark_running(rt: Runtime, flying: list[InFlight], statuses: dict[str, str], now: float) -> None:
    """Move each job still `submitted` whose task the list shows RUNNING to `running`, by compare-and-set on its
    attempt, its next poll due when it was (a fresh message carries it; the old one finds its attempt moved on).
    A job claimed meanwhile by its own poll is left to it."""
    for f in flying:
        job = f.job
        if job.status is Status.SUBMITTED and statuses.get(job.task_id or "") == "RUNNING":
            fields = {"task_status": "RUNNING"}
            rt.send(reschedule(rt, job, job.attempt, Status.RUNNING, Action.POLL, max(0.0, job.due_at - now), fields))


def _send_ended(
    rt: Runtime, flying: list[InFlight], statuses: dict[str, str], sent: dict[str, Sent], now: float
) -> dict[str, Sent]:
    """Send the poll of every job whose task the list shows ended: once per attempt, and when a poll already sent
    was answered "not ended" (its attempt moved on, the job still in flight), again only after a backoff.
    Returns what was sent, by ref, for the jobs still shown ended."""
    kept: dict[str, Sent] = {}
    for f in flying:
        job = f.job
        if statuses.get(job.task_id or "") not in UPSTREAM_FINAL:
            continue
        before = sent.get(job.ref)
        if before is not None and (
            before.attempt == job.attempt or now - before.at < RESEND_BACKOFF_S * 2 ** (before.times - 1)
        ):
            kept[job.ref] = before  # not handled yet, or answered otherwise a moment ago
            continue
        log.debug("task list shows the task ended; polling it now", ref=job.ref, task_id=job.task_id)
        rt.send(Next(Action.POLL, job.ref, job.attempt, 0.0))
        kept[job.ref] = Sent(job.attempt, now, before.times + 1 if before else 1)
    return kept
