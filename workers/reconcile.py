"""Reconciling a create whose outcome is unknown (it timed out, the connection dropped, the answer was
garbled, or the worker died mid-request), so that a task is never paid for twice, and never taken from the job
whose create made it.

The service has no idempotency key. Its advice is "do not create duplicate tasks; poll". So before sending
the same create again, genq lists the account's tasks of that model created in the window around the lost
attempt and adopts one no other job owns. Ownership (`genq:task:{id}`) is taken with SET NX only, by the
create's answer or by a reconciliation, so an owner is never replaced.

A task with no owner yet is not necessarily free: another job's create may have made it and still be waiting
for its answer. So every create records itself in its scope before it is sent (`genq:creating:{account}:
{model}`) and leaves once its answer has recorded the owner. A reconciliation waits until no other create of
the scope that was sent before its window closed is still unanswered (each is waited for at most until its
own timeout has passed), then lists. The task list answers no prompts, only each task's creation time in
milliseconds: a task is a candidate only if it was created between the moment the lost create was sent and
the moment genq stopped waiting for its answer, widened by `GENQ_RECONCILE_CLOCK_SKEW_S` on each side.

Every bound is the latest an answer can come: connecting (5 s) plus the request timeout (`http_timeout_s`),
not the request timeout alone. A submit re-sent by the sweep while its own create is still waiting (the
submit lease is shorter than a slow create) reconciles only after that bound, by when the first delivery has
its answer (and owns its task, which the reconciliation then adopts as its own) or has given up.

What remains: two creates of one scope that are both unsettled and made their tasks at nearly the same time.
The scope's submit rate spaces creates at least `1 / rate` apart (0.22 s at 5 per second) and a task is made
moments after its create is sent, so a task is taken as the create sent last before it (within the skew,
0.1 s): that is wrong only if the service took longer than the spacing to make a task, for two creates of
which neither got its answer. Both jobs would then succeed, each with the other's images, which the
manifest's `actual_prompts` shows. If a create's answer ever finds its task owned by another job (which the
waiting above rules out), the job follows its own task and the conflict is logged as an error.

Two more things widen that window, and the tests pin what holds:
- The clocks. Windows are on genq's clock, creation times on the service's; the skew allowance (0.1 s by
  default) is all the disagreement tolerated. A service clock further behind than that makes one create's task
  look made before it was sent: while the other create is still in flight, the wait above still keeps it from
  being taken (`test_reconciliation_never_takes_a_task_another_create_is_still_waiting_for` runs the service
  2 s behind), but between two creates that are both lost, the wrong one may be adopted. Keep hosts on NTP,
  and raise `GENQ_RECONCILE_CLOCK_SKEW_S` if they drift.
- The send time. `submit_sent_at` is written just before the request: a slow connect (up to its 5 s timeout)
  delays the task's creation by as much, which can move it past a later create's send and make it that
  create's (the same two-lost-creates case). And httpx's timeouts bound each read and write, not a whole
  request, so a service dripping its answer can stretch a create past `answer_bound_s`: a re-sent submit then
  reconciles while the first delivery still waits. A task already listed is taken as the job's own (one task),
  but one the service has not made yet is missed, and the create is sent again: paid twice. That needs a
  service that accepted a request and keeps its answer trickling for longer than the bound.

Creates known lost (their answer failed) are marked lost: nobody waits for an answer that cannot come, but until
their own reconciliation they still stand for the tasks they may have made. A task created after another
unsettled create was sent, later than this job's, is taken as that create's and never adopted here, so a lost
create that made no task does not take the task of a worker killed mid-request (the chaos suite found that one).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.claimed import log
from workers.dashscope.protocol import ListedTask, list_time
from workers.job import Job
from workers.quota.budget import task_query_qps
from workers.runtime import Runtime, answer_bound_s

#: Past the lost answer, before listing: the service records a task a moment after it accepts the request.
SLACK_S = 2.0


@dataclass(frozen=True)
class Reconciled:
    """`task_id` when a task from the lost create was found and adopted; `wait_s` when it is too early to look."""

    task_id: str | None = None
    wait_s: float = 0.0


def reconcile(rt: Runtime, job: Job, now: float) -> Reconciled:
    account = job.account or rt.settings.resolved_accounts()[0].name
    model, bound_s = job.request.model, answer_bound_s(rt.settings)
    sent_at = job.submit_sent_at or job.created_at
    skew = rt.settings.reconcile_clock_skew_s
    # The task, if any, was created while we waited for the answer: up to the failure, or (the worker died
    # mid-request, or is still waiting: the sweep re-sent its step) up to the latest its answer could come.
    gave_up_at = job.submit_failed_at or sent_at + bound_s
    window_end = gave_up_at + SLACK_S
    if now < window_end:
        return Reconciled(wait_s=window_end - now)
    others = [(at, lost) for ref, at, lost in rt.store.creates_unresolved(account, model) if ref != job.ref]
    # Another job's create sent before this window closed whose answer may still come may have made any task
    # in it: wait for that answer (it records the task's owner).
    answers_due = [
        at + bound_s + SLACK_S for at, lost in others if not lost and at <= gave_up_at + skew and now < at + bound_s
    ]
    if answers_due:
        log.info("waiting for creates in flight before reconciling", ref=job.ref, creates=len(answers_due))
        return Reconciled(wait_s=max(0.1, min(answers_due) - now))
    # Listing draws on the account's query budget like a poll: a spent budget is a wait, not a 429.
    qps = task_query_qps(rt.settings, rt.settings.account_settings(account))
    budget_wait_s = rt.quota.query_wait_s(account, qps, now, rt.rng)
    if budget_wait_s > 0:
        return Reconciled(wait_s=budget_wait_s)
    candidates = _listed(rt, job.account, model, sent_at - skew, gave_up_at + skew)
    for listed in sorted(candidates, key=lambda t: abs(t.created_at - sent_at)):
        task_id, created_at = listed.task_id, listed.created_at
        # A task is made moments after its create is sent: one created after another unsettled create (lost,
        # or its worker killed mid-request) was sent, later than this one, is that create's, not this one's.
        if any(sent_at < at <= created_at + skew for at, _ in others):
            continue
        # Owned by this job already: its create did succeed, and the worker died before recording the task.
        if task_id and rt.store.own_task(task_id, job.ref):
            log.warning("adopted the task of a create whose answer was lost", ref=job.ref, task_id=task_id)
            rt.store.end_create(account, model, job.ref)
            return Reconciled(task_id=task_id)
    log.info("the lost create made no task; sending it again", ref=job.ref)
    rt.store.end_create(account, model, job.ref)
    return Reconciled()


def _listed(rt: Runtime, account: str | None, model: str, start: float, end: float) -> list[ListedTask]:
    found: list[ListedTask] = []
    page = 1
    while True:
        tasks, pages = rt.client(account).list_tasks(
            model_name=model, start_time=list_time(start), end_time=list_time(end + 1), page_no=page, page_size=100
        )
        found += [t for t in tasks if start <= t.created_at <= end]
        if page >= pages or not tasks:
            return found
        page += 1
