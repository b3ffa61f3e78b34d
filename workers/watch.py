"""One query that speaks for many tasks: the account's task list, read by one watcher per account.

Polling each task on its own cannot notice an end within a second without spending many queries per task.
The service's task list (`GET /tasks` with a time window, `dashscope-api.md`) gives the status of every task
of the account in one answer (no result URLs: those still take one query of the task). So while any task of
the account is in flight, one watcher (`genq.watch`, on the poll queue) reads the list every
`watch_interval_s`, and for each task of ours that it shows ended (SUCCEEDED, FAILED or CANCELED) sends that
job's poll at once, carrying the job's current attempt: the poll claims the attempt, queries the task and
records its end; the job's own scheduled poll then finds its attempt moved on and does nothing.

It lists only when an end is plausible: no task of the account can have ended before its start plus the
shortest run the scope has shown (the learned run time's 0.5 % quantile, `workers/quota/durations.py`; with
nothing learned yet, any moment may be an end); before that the watcher sleeps. A list draws on the account's
query budget like every poll (or on `task_list_qps`, when the service gives the list a budget of its own).
Page after page (newest first, so the oldest tasks are on the last page: every page of the window is read, each
waiting for its own query), it reads the window from the oldest task in flight (less `WINDOW_SKEW_S`) to now, at
most `MAX_PAGES` pages a round.

What genq trusts, and what happens without it:
- the list's `status` of a task: an end it shows sends the task's poll; the poll's own answer is what is
  recorded, so a list that is wrong costs one query, never a result;
- a task missing from the list, or a list that fails: nothing is concluded. Polls of the account see the
  watcher's last good round (`ok_at`) grow old and go back to their own schedule (`workers/poll_policy.py`)
  within `WATCHED_FOR_S`; the watcher tries again with a backoff;
- an account in throttle mode has no queue upstream, and nothing changes here: the list shows ends the same way.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from config.catalogue import CATALOGUE, model_spec
from workers import metrics
from workers.admission import HOLDS_SLOT
from workers.dashscope.protocol import list_time, upstream_epoch
from workers.errors import RemoteError
from workers.job import UPSTREAM_FINAL, Action, Job, Next
from workers.quota.budget import QUERY_SAFETY
from workers.quota.quota import Scope
from workers.runtime import Runtime

log = structlog.get_logger("genq.watch")

#: A watcher that stops renewing (its worker died) is replaced after this long.
LEASE_S = 30.0
#: The longest a watcher sleeps while no end is plausible: a task admitted meanwhile is looked at by then.
MAX_SLEEP_S = 10.0
#: Polls count the account as watched while the watcher's last good round is this recent.
WATCHED_FOR_S = MAX_SLEEP_S + 5.0
#: The list's window starts this long before the oldest task in flight (and ends this long after now): its
#: times are whole seconds on the service's clock, which may disagree a little with ours. Every second more
#: brings tasks long finished into the window, and pages to read.
WINDOW_SKEW_S = 5.0
PAGE_SIZE = 100
MAX_PAGES = 5
#: The longest a round waits for the query budget to read one more page.
PAGE_WAIT_MAX_S = 1.0
#: A run's shortest plausible length: this quantile of the learned run time.
EARLIEST_END_QUANTILE = 0.005
#: After a failed list, the next try waits this long (doubling per failure in a row, up to the cap).
RETRY_S, RETRY_CAP_S = 2.0, 60.0

StartWatch = Callable[[str, str], None]


@dataclass(frozen=True)
class InFlight:
    job: Job
    earliest_end_at: float  # before this the task cannot have ended


def watching(rt: Runtime, account: str, now: float) -> bool:
    """Make sure the account's task list is watched (start a watcher if none holds the lease); whether per-task
    polls may count on it (its last good round is recent)."""
    if not rt.settings.watch_task_list:
        return False
    token = secrets.token_hex(8)
    started, ok_at = rt.watch_board.claim(account, token, LEASE_S)
    if started:
        rt.start_watch(account, token)
    return ok_at is not None and now - ok_at <= WATCHED_FOR_S


def keep_watching(rt: Runtime, now: float) -> int:
    """The sweep's part: make sure every account with tasks in flight is watched (a watcher whose worker died is
    replaced as soon as its lease lapses, not only at the next poll). Returns the accounts looked at."""
    looked = 0
    for account in rt.settings.resolved_accounts():
        scopes = [Scope(account.name, m) for m in CATALOGUE if account.serves(m)]
        if any(rt.quota.slots_held(scopes, now).values()):
            watching(rt, account.name, now)
            looked += 1
    return looked


def list_qps(rt: Runtime, account: str) -> float:
    """What one list may draw: its own budget when configured, else the account's query budget."""
    return rt.settings.task_list_qps or rt.settings.account_settings(account).query_qps


def list_share_qps(rt: Runtime) -> float:
    """The queries per second a busy watcher spends on lists (what is left of the budget for task polls)."""
    if not rt.settings.watch_task_list or rt.settings.task_list_qps:
        return 0.0
    return 1.0 / rt.settings.watch_interval_s


def watch_round(rt: Runtime, account: str, token: str, *, failures: int = 0) -> tuple[float, int] | None:
    """One round of the account's watcher: (seconds until the next, failed lists in a row), or None to stop."""
    now = rt.clock()
    state = rt.watch_board.read(account)
    if state.token != token:
        return None  # another watcher holds the account (this one's lease lapsed)
    flying = in_flight(rt, account, now)
    if not flying:
        rt.watch_board.leave(account, token)
        return None
    earliest = min(f.earliest_end_at for f in flying)
    if earliest > now + rt.settings.watch_interval_s:
        # Nothing can have ended yet: a good round all the same (polls may still count on the watcher).
        if not rt.watch_board.hold(account, token, LEASE_S, ok_at=now, sent=state.sent):
            return None
        return min(MAX_SLEEP_S, earliest - now), 0
    budget_key = f"list:{account}" if rt.settings.task_list_qps else account
    wait_s = rt.quota.query_wait_s(budget_key, list_qps(rt, account), now, rt.rng)
    if wait_s > 0:
        return (wait_s, failures) if rt.watch_board.hold(account, token, LEASE_S, ok_at=None, sent=state.sent) else None
    try:
        statuses = _listed(rt, account, budget_key, min(f.job.submitted_at or now for f in flying) - WINDOW_SKEW_S, now)
    except RemoteError as exc:
        failures += 1
        log.warning("task list failed; polls go on by themselves", account=account, code=exc.code, failures=failures)
        if not rt.watch_board.hold(account, token, LEASE_S, ok_at=None, sent=state.sent):
            return None
        return min(RETRY_CAP_S, RETRY_S * 2 ** (failures - 1)), failures
    sent = _send_ended(rt, flying, statuses, state.sent)
    if not rt.watch_board.hold(account, token, LEASE_S, ok_at=now, sent=sent):
        return None
    return rt.settings.watch_interval_s, 0


def in_flight(rt: Runtime, account: str, now: float) -> list[InFlight]:
    """The account's jobs whose task is upstream and whose next action is a poll, with when each could end."""
    found = []
    for model in CATALOGUE:
        scope = Scope(account, model)
        holders = rt.quota.slot_holders(scope, now)
        if not holders:
            continue
        run = rt.durations.learned(account, model, model_spec(model).kind, now).run
        # The prior is a guess from the pages: until the scope has shown its own runs, any moment may be an end.
        shortest_s = run.quantile(EARLIEST_END_QUANTILE) if run.learned else 0.0
        for ref in holders:
            job = rt.store.get(ref)
            if job is None or not job.task_id or job.status not in HOLDS_SLOT or job.next_action is not Action.POLL:
                continue
            started_at = upstream_epoch(job.upstream.get("scheduled_time", "")) or job.submitted_at or now
            found.append(InFlight(job, started_at + shortest_s))
    return found


def _listed(rt: Runtime, account: str, budget_key: str, start: float, now: float) -> dict[str, str]:
    """task_id -> status over the window, page by page (each page after the first takes its own query)."""
    statuses: dict[str, str] = {}
    client = rt.client(account)
    for page in range(1, MAX_PAGES + 1):
        # The first page's query was taken by the round. Pages come newest first, so the oldest tasks (the likeliest
        # to have ended) are on the last one: a round that stopped early would never see them. So each further
        # page waits for its query (a few tens of milliseconds), unless the budget is spent for longer.
        if page > 1 and not _await_query(rt, budget_key, list_qps(rt, account)):
            break
        try:
            tasks, pages = client.list_tasks(
                start_time=list_time(start), end_time=list_time(now + WINDOW_SKEW_S), page_no=page, page_size=PAGE_SIZE
            )
        except RemoteError:
            metrics.TASK_LISTS.labels(account=account, outcome="failed").inc()
            raise
        metrics.TASK_LISTS.labels(account=account, outcome="ok").inc()
        statuses.update((t.task_id, t.status) for t in tasks)
        if page >= pages or not tasks:
            break
    return statuses


def _await_query(rt: Runtime, budget_key: str, qps: float) -> bool:
    """Take one query of the budget, sleeping for it up to `PAGE_WAIT_MAX_S`; False when it is not had by then."""
    waited_s = 0.0
    while (wait_s := rt.quota.query_wait_s(budget_key, qps, rt.clock(), rt.rng)) > 0:
        if waited_s + wait_s > PAGE_WAIT_MAX_S:
            return False
        time.sleep(wait_s)
        waited_s += wait_s
    return True


def _send_ended(rt: Runtime, flying: list[InFlight], statuses: dict[str, str], sent: dict[str, int]) -> dict[str, int]:
    """Send the poll of every job whose task the list shows ended (once per attempt); the polls sent, by ref."""
    now_sent: dict[str, int] = {}
    for f in flying:
        job = f.job
        if statuses.get(job.task_id or "") not in UPSTREAM_FINAL:
            continue
        now_sent[job.ref] = job.attempt
        if sent.get(job.ref) != job.attempt:
            log.debug("task list shows the task ended; polling it now", ref=job.ref, task_id=job.task_id)
            rt.send(Next(Action.POLL, job.ref, job.attempt, 0.0))
    return now_sent


def budget_for_polls(rt: Runtime, account: str) -> float:
    """The queries per second task polls of `account` may count on: its budget less what the watcher spends."""
    return max(0.5, rt.settings.account_settings(account).query_qps * QUERY_SAFETY - list_share_qps(rt))
