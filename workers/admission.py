"""Admission: accepted jobs wait in their model's queue in Redis; a slot frees, the next job goes to `submit`.

A job is created `accepted` in `genq:wait:{model}` (not as a Celery message, so 100,000 waiting prompts cost
Redis memory, not a worker's). `dispatch` fills every free slot of every account serving the model: it looks
at the job first in line, takes a slot of the account for it (`workers/quota/slots.py`), moves it to
`admitted` by compare-and-set (its deadline starts now) and only then takes it out of the queue. Each step
is safe to repeat, so a dispatcher that dies half-way, or two that race for one job, leave no job lost and no
slot double-booked: the loser of the compare-and-set gives back the slot it took, and the recovery sweep's
slot audit gives back any slot whose job no longer needs it.

Who calls `dispatch`: the producer when a batch arrives, the stage that frees a slot (a poll that sees the
task end, any job that ends), and the periodic sweep.

Budget: a job is admitted only with a reservation of its largest possible bill in its batch's and its
account's day's spending ledgers (`workers/quota/spend.py`), taken in one atomic step with the caps checked;
so no cap is ever overshot, however many dispatchers admit at once. A job over its batch's cap is held out of
the queue (it waits with the batch, and is put back in line when the cap is raised or spending falls); one
over its account's cap for the day leaves it waiting in line, and that account admits nothing more of the
model this round (the next day, or a raised cap, lets it go on). With `budget_on_cap = "reject"` such a job
ends `failed` (`BudgetCapReached`) instead. When a job's bill is known the reservation becomes that bill;
when it ends without one, the reservation is given back (`settle_spend`).

Order: a batch's priority (0-9) is a band, and a band is served before every lower one; within a band,
batches take turns (the queue's score, see `workers/jobstore/lua/create_job.lua`), so a ten-row interactive batch is not
stuck behind a 100,000-row nightly one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from config.accounts import AccountSettings
from config.catalogue import Kind
from config.settings import Settings
from workers import account_pause
from workers.billing import SYNC_OUTCOME_UNKNOWN, largest_bill, utc_day
from workers.events import cloud_event, iso_time, job_event
from workers.job import Action, Job, Next, Status
from workers.jobstore import JobStore
from workers.quota.quota import Quota, Scope
from workers.quota.spend import NO_PRICE, Cap, LedgerSpec, Refusal, Reserved, batch_ledger, day_ledger

log = structlog.get_logger("genq.admission")

Send = Callable[[Next | None], None]

#: The code of a job that a cap stopped, with `budget_on_cap = "reject"`.
BUDGET_CAP_REACHED = "BudgetCapReached"
#: Held jobs put back in line at once when a batch's spending falls (the rest follow as more room appears).
UNHOLD_CHUNK = 100
#: Statuses in which a job needs its slot: its task is (or is about to be) upstream.
HOLDS_SLOT = frozenset({Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.RUNNING, Status.OVERDUE})


def deadline_s(settings: Settings, model: str) -> float:
    kind = settings.spec(model).kind
    return settings.video_deadline_s if kind is Kind.VIDEO else settings.image_deadline_s


def scope_of(job: Job) -> Scope | None:
    """The scope whose slot the job holds (None before admission)."""
    return Scope(job.account, job.request.model) if job.account else None


def admit(
    store: JobStore, settings: Settings, ref: str, account: str, *, now: float | None = None, job: Job | None = None
) -> Next | None:
    """Move an `accepted` job to `admitted` under `account`: its deadline starts now and its submit is due now.
    Returns the submit message; None when the job was no longer waiting. `job`: the job as its reservation was
    judged on, whose attempt the move must still find (a job revived since is judged again)."""
    now = time.time() if now is None else now
    job = store.get(ref) if job is None else job
    if job is None or job.status is not Status.ACCEPTED:
        return None
    # A claim: it advances the attempt, so of two dispatchers that judged the job at one attempt only the first
    # admits it (`admitted` may stay `admitted`, so the move alone would let both through).
    applied = store.claim(
        ref,
        Status.ADMITTED,
        expected_attempt=job.attempt,
        action=Action.SUBMIT,
        lease_until=now,
        fields={"deadline_at": now + deadline_s(settings, job.request.model), "account": account},
        now=now,
    )
    return Next(Action.SUBMIT, ref, applied.attempt) if applied.ok else None


def serving(settings: Settings, model: str) -> list[AccountSettings]:
    return [a for a in settings.resolved_accounts() if a.serves(model)]


def dispatch(
    store: JobStore, quota: Quota, settings: Settings, model: str, send: Send, *, now: float | None = None
) -> int:
    """Admit waiting jobs of `model` into every free slot of every account serving it; returns how many. A model
    this process's config does not know is left to the processes that do (their limits are not known here)."""
    now = time.time() if now is None else now
    if model not in settings.catalogue:
        log.warning("jobs of a model this process does not know are left waiting", model=model)
        return 0
    admitted = 0
    paused = account_pause.all_paused(store)
    accounts = [a for a in serving(settings, model) if a.name not in paused]
    for account in accounts:
        scope = Scope(account.name, model)
        limit = quota.slot_limit(scope, settings.limits(account.name, model).slot_limit, settings.slot_probe_s, now)
        while (first := store.next_waiting(model)) is not None:
            ref, score = first
            if not quota.take_slot(scope, ref, limit=limit, lease_s=settings.slot_lease_s, now=now):
                break  # this account is full; the next one may have room
            job = store.get(ref)
            if job is None or job.status is not Status.ACCEPTED:  # admitted, or ended, since it was queued
                if not _settle_lost_race(store, quota, scope, ref, ()):
                    break
                continue
            reservation = reserve_spend(quota, settings, job, account.name, now)
            if isinstance(reservation, Refusal):
                last = account is accounts[-1]  # no other account can take it: `reject` may end it
                if not _over_cap(store, quota, settings, scope, job, reservation, now, last_account=last):
                    break  # the account's cap for the day: it admits nothing more of this model now
                continue  # the job is held (or ended): the next one in line may fit
            step = admit(store, settings, ref, account.name, now=now, job=job)
            if step is None:
                if not _settle_lost_race(store, quota, scope, ref, _ledgers(job, account.name, now, reservation)):
                    break
                continue
            store.leave_queue(model, ref)
            store.advance_clock(model, score)
            send(step)
            admitted += 1
    if admitted:
        log.debug("admitted", model=model, jobs=admitted)
    return admitted


def _settle_lost_race(store: JobStore, quota: Quota, scope: Scope, ref: str, reserved: Sequence[str]) -> bool:
    """`ref` could not be admitted (it ended, was revived, or a racing dispatcher admitted it first). Keep the
    slot only if the job now holds it; give back the reservations this dispatcher took (`reserved`: none of a
    racing one's, which are named by the same job); take the job out of the queue unless it is still waiting.
    False when it still is (the caller stops rather than look at it again)."""
    job = store.get(ref)
    if not (job is not None and job.status in HOLDS_SLOT and job.account == scope.account):
        quota.release_slot(scope, ref)
    if reserved and job is not None and job.status is not Status.ACCEPTED and not job.terminal:
        # Admitted by a racing dispatcher, whose admission stands on the reservations named by the job: its batch's,
        # and its account's day when that is this one's. Only a day of another account was this dispatcher's alone.
        kept = set(job_ledgers(job, job.account or "", utc_day(job.times.get("admitted", 0.0))))
        reserved = [key for key in reserved if key not in kept]
    if reserved:
        quota.spend.settle(reserved, ref, units=0.0, money=0.0)
    if job is not None and job.status is Status.ACCEPTED:
        return False
    store.leave_queue(scope.model, ref)
    return True


def _ledgers(job: Job, account: str, now: float, reservation: Reserved) -> list[str]:
    """The keys of the ledgers `reservation` was newly taken in (its batch's: 0, its account's day: 1)."""
    keys = job_ledgers(job, account, utc_day(now))
    return [keys[i] for i in reservation.new]


def job_ledgers(job: Job, account: str, day: str) -> tuple[str, str]:
    """The ledgers a job's reservation is taken in, in this order: its batch's, and its account's for `day`."""
    return batch_ledger(job.batch_id), day_ledger(day, account)


def reserve_spend(quota: Quota, settings: Settings, job: Job, account: str, now: float) -> Refusal | Reserved:
    """Reserve the job's largest possible bill in its batch's ledger and its account's for the day, or refuse
    (nothing reserved) when that would cross a cap. The account's daily cap is passed only by a process that
    has one configured: one without leaves the cap another stored for the day as it is."""
    ref = job.ref
    units = largest_bill(job.request)
    price = settings.prices.get(job.request.model)
    money = NO_PRICE if price is None else units * price
    day, limits = utc_day(now), settings.account_settings(account)
    batch_key, day_key = job_ledgers(job, account, day)
    ledgers = [
        LedgerSpec(batch_key, None, {"scope": "batch", "batch_id": job.batch_id}),
        LedgerSpec(
            day_key,
            daily if (daily := Cap(limits.daily_cap_units, limits.daily_cap_money)).any else None,
            {"scope": "account_day", "account": account, "day": day},
        ),
    ]
    events = [json.dumps(_cap_event(spec, ref, now), ensure_ascii=False) for spec in ledgers]
    return quota.spend.reserve(
        ledgers,
        ref,
        units=units,
        money=money,
        events=events,
        event_stream=settings.event_stream,
        maxlen=settings.event_stream_maxlen,
    )


def _cap_event(spec: LedgerSpec, ref: str, now: float) -> dict[str, Any]:
    """`genq.budget.cap_reached` of a ledger, as its first refusal appends it (the cap as the refusal saw it is
    in the ledger; the event names it as configured when it was built)."""
    label = spec.label
    subject = label["batch_id"] if label["scope"] == "batch" else f"{label['account']}/{label['day']}"
    cap = spec.cap or Cap()
    data = {**label, "cap_units": cap.units, "cap_money": cap.money, "ref": ref}
    return cloud_event("genq.budget.cap_reached", subject, f"budget/{subject}/{iso_time(now)}", data, now=now)


def _over_cap(
    store: JobStore,
    quota: Quota,
    settings: Settings,
    scope: Scope,
    job: Job,
    refused: Refusal,
    now: float,
    *,
    last_account: bool,
) -> bool:
    """A job whose largest bill would cross a cap gives back the slot it took (unless a racing dispatcher has
    admitted it meanwhile, under that very slot), then is held out of line with its batch (the batch's cap), left
    in line (the account's cap for the day: False, the account admits nothing more of the model now), or ended
    `failed` (`budget_on_cap = "reject"`)."""
    current = store.get(job.ref)
    if current is None or current.status is not Status.ACCEPTED:
        _settle_lost_race(store, quota, scope, job.ref, ())
        return True
    quota.release_slot(scope, job.ref)
    batch = refused.index == 0
    if settings.budget_on_cap == "wait" or not (batch or last_account):
        if batch:
            store.hold(scope.model, job.ref)
        return batch
    message = over_cap_reason(refused, batch=batch, account=scope.account)
    event = job_event(current, Status.FAILED, now=now, error_code=BUDGET_CAP_REACHED, error_message=message)
    applied = store.transition(
        job.ref,
        Status.FAILED,
        expected_attempt=current.attempt,
        fields={"error_code": BUDGET_CAP_REACHED, "error_message": message},
        event=event,
        now=now,
    )
    if applied.ok:
        store.leave_queue(scope.model, job.ref)
    return True


def over_cap_reason(refused: Refusal, *, batch: bool, account: str) -> str:
    """Why a job was not admitted, in words: which cap, and what is committed against it."""
    whose = "the batch's budget cap" if batch else f"account {account}'s budget cap for the day (UTC)"
    if refused.no_price:
        return f"{whose} is in money, and the model has no price (`prices`)"
    parts = []
    if refused.cap.units is not None:
        parts.append(f"{refused.committed_units:g} of {refused.cap.units:g} units committed")
    if refused.cap.money is not None:
        parts.append(f"{refused.committed_money:.2f} of {refused.cap.money:.2f} in money committed")
    return f"{whose} would be crossed by its largest bill ({'; '.join(parts)})"


def settle_spend(
    store: JobStore,
    quota: Quota,
    settings: Settings,
    job: Job,
    send: Send,
    *,
    units: float | None = None,
    status: Status | None = None,
    code: str | None = None,
) -> None:
    """The job's reservation becomes what it cost: `units` billed (its task succeeded), else nothing (it ended
    without a bill), else, when what it cost is not known here, its largest bill, kept as spent: its outcome
    cannot be known (`status` expired, or a synchronous call's answer lost), or this try's task succeeded and
    its bill was recorded by a process that died before settling. When that frees room, held jobs of its batch
    go back in line. A job never admitted (a dispatcher died after reserving) has only its batch's to give."""
    if units is None:
        unknown = status is Status.EXPIRED or code == SYNC_OUTCOME_UNKNOWN or bool(job.results)
        units = -1.0 if unknown else 0.0
    price = settings.prices.get(job.request.model)
    money = units if units < 0 else (units * price if price is not None else 0.0)
    admitted_at = job.times.get("admitted")
    ledgers = [batch_ledger(job.batch_id)]
    if admitted_at is not None and job.account:
        ledgers = list(job_ledgers(job, job.account, utc_day(admitted_at)))
    settled = quota.spend.settle(ledgers, job.ref, units=units, money=money)
    freed = settled and 0 <= units < largest_bill(job.request)  # a bill of all it reserved frees nothing
    if freed and store.held(job.batch_id) and store.unhold(job.batch_id, limit=UNHOLD_CHUNK):
        dispatch_all(store, quota, settings, send)


def dispatch_all(store: JobStore, quota: Quota, settings: Settings, send: Send, *, now: float | None = None) -> int:
    """`dispatch` every model that has jobs waiting (the producer after a batch, and the periodic sweep)."""
    waiting = store.waiting(settings.catalogue.names())
    return sum(dispatch(store, quota, settings, model, send, now=now) for model in waiting)


def release(store: JobStore, quota: Quota, settings: Settings, job: Job, send: Send) -> bool:
    """Give back the job's slot (its task ended upstream, or it ended) and admit the next job into it."""
    scope = scope_of(job)
    if scope is None or not quota.release_slot(scope, job.ref):
        return False
    dispatch(store, quota, settings, job.request.model, send)
    return True
