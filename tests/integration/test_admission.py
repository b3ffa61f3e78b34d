"""Admission and quota with the stages in-process, against a real Redis and the simulator: slots bound what is
upstream, higher priority goes first, batches of one band take turns, and two accounts each keep their limits."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import SecretStr

from config.accounts import AccountSettings
from tests.conftest import SIM_KEY, RunningSimulator, raw_redis
from tests.stage_runner import enqueue, run
from workers.job import Next, Status
from workers.jobstore import keys
from workers.quota.quota import Scope
from workers.runtime import Runtime
from workers.sweep import resend_overdue, sweep

MODEL = "wan2.5-t2i-preview"


def rows(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "prompt": f"{prefix} prompt {i}", "model": MODEL} for i in range(count)]


def sim_host(sim: RunningSimulator) -> str:
    return sim.url.removeprefix("http://")


def admissions(rt: Runtime, *batches: str) -> list[tuple[str, float]]:
    """(ref, when admitted) of every job of the batches, in the order they were admitted."""
    jobs = [j for b in batches for j in rt.store.jobs(b)]
    return sorted(((j.ref, j.times.get("admitted", float("inf"))) for j in jobs), key=lambda pair: pair[1])


def scope_peak(sim: RunningSimulator, account: str = "default") -> dict[str, int]:
    scopes = sim.engine.snapshot(time.time())["scopes"]
    return {s["model"]: s["max_running"] for s in scopes if s["account"] == account}


def test_slots_bound_what_is_upstream_and_all_come_back(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """30 jobs on a scope of 2 tasks at once plus a queue of 1: never more than 3 jobs hold a slot, the service
    never runs more than 2, every job succeeds, and no slot is left held."""
    sim = simulator_factory()
    sim.engine.configure(limits={MODEL: [5, 2]})
    account = AccountSettings(
        name="default",
        api_keys=(SecretStr(SIM_KEY),),
        base_url=sim.base_url,
        limits={MODEL: (5, 2)},
        server_queue_depth=1,
    )
    rt = runtime_factory(accounts=(account,), dashscope_base_url=sim.base_url, result_hosts=(sim_host(sim),))
    scope, peak = Scope("default", MODEL), 0

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, len(rt.quota.slot_holders(scope, time.time())))
        return False

    steps = enqueue(rt, *rows("j", 30))
    assert len(steps) == 3  # only the slots' worth is sent to Celery; the rest wait in Redis
    assert rt.store.waiting([MODEL]) == {MODEL: 27}
    run(rt, steps, timeout_s=90, until=sample)
    assert [j.status for j in rt.store.jobs("b")] == [Status.SUCCEEDED] * 30
    assert peak <= 3
    assert scope_peak(sim)[MODEL] <= 2
    assert rt.quota.slot_holders(scope, time.time()) == []
    counters = sim.counters()
    assert counters["creates"] == 30 and counters.get("throttled_submit", 0) == 0


def test_a_higher_priority_batch_goes_before_a_waiting_one(runtime: Runtime) -> None:
    """A 10-job batch of priority 8 arriving behind 40 waiting jobs of priority 2 is admitted into the next
    slots that free, before any more of the waiting batch, and starts within one generation time."""
    steps = enqueue(runtime, *rows("n", 40), batch_id="nightly", priority=2)
    steps = run(runtime, steps, timeout_s=60, until=lambda: sum(j.terminal for j in runtime.store.jobs("nightly")) >= 5)
    arrived = time.time()
    steps += enqueue(runtime, *rows("i", 10), batch_id="interactive", priority=8)
    run(runtime, steps, timeout_s=120)
    interactive = list(runtime.store.jobs("interactive"))
    assert all(j.status is Status.SUCCEEDED for j in interactive)
    admitted_after = [ref for ref, at in admissions(runtime, "nightly", "interactive") if at > arrived]
    assert admitted_after[:10] == [f"interactive/i{i}" for i in range(10)]  # no waiting job went before them
    # Within one generation (1.1 s at most in the fast profile), with room for a loaded machine's delays; waiting
    # behind the 35 jobs still queued would take 7 s or more (5 slots).
    first_start = min(j.times["admitted"] for j in interactive)
    assert first_start - arrived < 3.0


def test_batches_of_one_band_take_turns(runtime: Runtime) -> None:
    """Batch B (10 jobs) queued while batch A (40 jobs) waits, both of priority 5: B's jobs alternate with A's
    rather than waiting for A's remaining 30."""
    steps = enqueue(runtime, *rows("a", 40), batch_id="A")
    steps += enqueue(runtime, *rows("b", 10), batch_id="B")
    run(runtime, steps, timeout_s=120)
    order = [ref.split("/")[0] for ref, _ in admissions(runtime, "A", "B")]
    last_b = max(i for i, batch in enumerate(order) if batch == "B")
    assert last_b < 10 + 2 * 10 + 1  # the 10 first slots went to A, then they alternated
    assert order.count("A") == 40


def test_two_accounts_each_hold_their_limits_and_both_work(
    runtime_factory: Callable[..., Runtime], simulator_factory: Callable[..., RunningSimulator]
) -> None:
    """Two accounts (one with two keys) on one simulator: jobs spread over both, each account's scope never
    runs more than its 2 tasks at once, and the second account's creates use both of its keys."""
    sim = simulator_factory(keys={"key-a": "acct-a", "key-b1": "acct-b", "key-b2": "acct-b"})
    sim.engine.configure(limits={MODEL: [5, 2]})
    accounts = (
        AccountSettings(name="acct-a", api_keys=(SecretStr("key-a"),), base_url=sim.base_url, limits={MODEL: (5, 2)}),
        AccountSettings(
            name="acct-b",
            api_keys=(SecretStr("key-b1"), SecretStr("key-b2")),
            base_url=sim.base_url,
            limits={MODEL: (5, 2)},
        ),
    )
    rt = runtime_factory(
        accounts=accounts,
        dashscope_api_key=SecretStr("key-a"),
        dashscope_base_url=sim.base_url,
        result_hosts=(sim_host(sim),),
    )
    for account in accounts:  # both scopes' tasks known to take under a second, so that no job waits on the
        for _ in range(10):  # prior's first poll (~18 s) while the other account's jobs go round
            rt.durations.record(account.name, MODEL, run_s=0.7, queue_s=0.0, now=time.time())
    run(rt, enqueue(rt, *rows("j", 24)), timeout_s=90)
    jobs = list(rt.store.jobs("b"))
    assert all(j.status is Status.SUCCEEDED for j in jobs)
    by_account = {a: sum(j.account == a for j in jobs) for a in ("acct-a", "acct-b")}
    assert min(by_account.values()) >= 6, by_account
    assert scope_peak(sim, "acct-a")[MODEL] <= 2 and scope_peak(sim, "acct-b")[MODEL] <= 2
    by_key = {e["key_suffix"]: e["creates"] for e in sim.engine.snapshot(time.time())["creates_by_key_model"]}
    assert by_key.get("y-b1", 0) > 0 and by_key.get("y-b2", 0) > 0
    assert not raw_redis(rt.settings).exists(keys.slots("acct-a", MODEL), keys.slots("acct-b", MODEL))


def test_the_sweep_gives_back_a_slot_its_stage_died_before_releasing(runtime: Runtime) -> None:
    """A job ends but its worker dies before giving its slot back: the sweep's audit frees the slot and admits
    the next waiting job into it, and leaves the slots of jobs still upstream alone."""
    steps = enqueue(runtime, *rows("j", 12))
    assert len(steps) == 10 and runtime.store.waiting([MODEL]) == {MODEL: 2}  # 5 at once + 5 queued upstream
    ended = steps[0].ref
    runtime.store.transition(ended, Status.CANCELED, expected_attempt=None)  # no release: the stage "died"
    sent: list[Next] = []
    report = sweep(runtime, lambda step: sent.append(step) if step else None)
    assert report.slots_freed == 1 and report.admitted == 1
    assert [s.action.value for s in sent] == ["submit"] and sent[0].ref not in {s.ref for s in steps}
    holders = runtime.quota.slot_holders(Scope("default", MODEL), time.time())
    assert ended not in holders and len(holders) == 10


def test_the_sweep_drops_due_entries_of_ended_or_unknown_jobs_and_queues_a_revived_one(runtime: Runtime) -> None:
    """Due-index entries left by a process that died between two writes (a job ended, a job gone, a job revived
    for a retry) are each dropped by the sweep without a message re-sent, and the revived job is put back in
    line for a slot and admitted."""
    steps = enqueue(runtime, *rows("j", 2))
    ended, revived = (step.ref for step in steps)
    for ref in (ended, revived):
        runtime.store.transition(ref, Status.FAILED, expected_attempt=None, fields={"error_code": "InternalError"})
        runtime.quota.release_slot(Scope("default", MODEL), ref)
    failed = runtime.store.get(revived)
    assert failed is not None and runtime.store.revive(failed, now=time.time()).ok
    past = time.time() - 3600
    raw_redis(runtime.settings).zadd(keys.DUE, {ended: past, revived: past, "b/gone": past})
    sent: list[Next] = []
    assert resend_overdue(runtime, lambda step: sent.append(step) if step else None) == 0
    assert sent == [] and runtime.store.due(time.time() + 3600) == []
    assert runtime.store.waiting([MODEL]) == {MODEL: 1}
    sweep(runtime, lambda step: sent.append(step) if step else None)  # the whole sweep: its admission too
    assert [(step.action.value, step.ref) for step in sent] == [("submit", revived)]
    job = runtime.store.get(revived)
    assert job is not None and job.status is Status.ADMITTED


def test_a_config_that_raises_a_models_limits_admits_that_many(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator
) -> None:
    """wanx2.0-t2i-turbo ships with 2 tasks at once (and as many queued upstream: 4 slots); a config raising it to 6
    makes admission take 12 of 15 jobs at once, and the slots are the ones the raised limit gives."""
    model = "wanx2.0-t2i-turbo"
    requests = [{"id": f"j{i}", "prompt": f"p{i}", "model": model} for i in range(15)]
    shipped = runtime_factory()
    assert len(enqueue(shipped, *requests, batch_id="shipped")) == 4
    raised = runtime_factory(models={model: {"max_concurrent": 6}})
    assert len(enqueue(raised, *requests, batch_id="raised")) == 12 - 4  # the shipped batch holds 4 of the 12
    held = raised.quota.slot_holders(Scope(raised.settings.account, model), time.time())
    assert len(held) == 12
