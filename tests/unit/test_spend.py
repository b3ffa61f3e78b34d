"""Spending ledgers (`workers/quota/spend.py`), in Redis and in memory: a reservation is taken in every ledger or
in none, never carries one past its cap (whatever concurrent admissions do), becomes the bill when it is known,
is given back when there is none, and the first refusal of a ledger announces it once."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.quota.spend import NO_PRICE, Cap, LedgerSpec, MemorySpend, RedisSpend, Reserved, Spend

STREAM_MAXLEN = 1000


@pytest.fixture(params=["redis", "memory"])
def spend(request: pytest.FixtureRequest) -> Iterator[Spend]:
    if request.param == "memory":
        yield MemorySpend()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    yield RedisSpend(client)
    client.close()


def ledger(cap: Cap | None = None) -> LedgerSpec:
    return LedgerSpec("genq:spend:test:" + secrets.token_hex(4), cap, {"scope": "batch", "batch_id": "b"})


def reserve(spend: Spend, ledgers: list[LedgerSpec], ref: str, units: float, money: float = 0.0) -> Any:
    events = [json.dumps({"ledger": spec.key}) for spec in ledgers]
    return spend.reserve(
        ledgers, ref, units=units, money=money, events=events, event_stream="genq:events:test", maxlen=STREAM_MAXLEN
    )


def test_a_reservation_is_taken_in_every_ledger_or_in_none(spend: Spend) -> None:
    """Two ledgers with room for 4 and 10 units: 3 fits both; 2 more would cross the first, so nothing is
    reserved in either, and the refusal names the first ledger with what it has committed and its cap."""
    tight, loose = ledger(Cap(units=4)), ledger(Cap(units=10))
    assert isinstance(reserve(spend, [tight, loose], "b/j1", 3), Reserved)
    refused = reserve(spend, [tight, loose], "b/j2", 2)
    assert refused is not None and refused.index == 0  # type: ignore[attr-defined]
    assert (refused.committed_units, refused.cap) == (3, Cap(units=4))  # type: ignore[attr-defined]
    assert spend.read(tight.key).committed_units == 3 and spend.read(loose.key).committed_units == 3
    assert spend.reservations(loose.key) == ["b/j1"]


def test_a_repeated_reservation_counts_once(spend: Spend) -> None:
    """The same job reserving again (a second dispatcher, a retried admission) keeps the one reservation."""
    spec = ledger(Cap(units=5))
    assert reserve(spend, [spec], "b/j", 4) == Reserved((0,))
    assert reserve(spend, [spec], "b/j", 4) == Reserved(())  # nothing newly reserved: nothing to give back
    assert spend.read(spec.key).committed_units == 4 and spend.read(spec.key).reserved == 1


def test_settling_turns_the_reservation_into_the_bill_or_gives_it_back(spend: Spend) -> None:
    """A job that reserved 4 and was billed 3 commits 3; one that ended unbilled commits nothing; one whose
    outcome is unknown keeps its 4 as spent; settling again does nothing."""
    spec = ledger(Cap(units=100, money=100))
    for ref in ("b/billed", "b/none", "b/unknown"):
        assert isinstance(reserve(spend, [spec], ref, 4, money=2.0), Reserved)
    assert spend.settle([spec.key], "b/billed", units=3, money=1.5) == 1
    assert spend.settle([spec.key], "b/none", units=0, money=0) == 1
    assert spend.settle([spec.key], "b/unknown", units=-1, money=-1) == 1
    assert spend.settle([spec.key], "b/billed", units=3, money=1.5) == 0
    state = spend.read(spec.key)
    assert (state.committed_units, state.committed_money, state.reserved) == (7, 3.5, 0)


def test_the_first_refusal_announces_the_cap_once_and_a_new_cap_arms_it_again(
    spend: Spend, request: pytest.FixtureRequest
) -> None:
    """Refused three times, a ledger appends one event (Redis: to the stream, in the same step); raising the cap
    lets the job in; reaching the new cap announces again."""
    spec = ledger(Cap(units=1))
    assert isinstance(reserve(spend, [spec], "b/a", 1), Reserved)
    for _ in range(3):
        assert reserve(spend, [spec], "b/b", 1) is not None
    spend.set_cap(spec.key, Cap(units=2))
    assert not spend.read(spec.key).reached
    unstored = LedgerSpec(spec.key, None, spec.label)  # the cap stored in the ledger (set_cap's)
    assert isinstance(reserve(spend, [unstored], "b/b", 1), Reserved)
    assert reserve(spend, [unstored], "b/c", 1) is not None
    if isinstance(spend, MemorySpend):
        announced = len(spend.events)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
        announced = len(client.xrange("genq:events:test"))
        client.delete("genq:events:test")
    assert announced == 2


def test_a_process_without_a_cap_leaves_the_stored_one_and_a_new_figure_arms_the_event(spend: Spend) -> None:
    """A ledger capped at 2 by one process: another that passes no cap (its configuration has none) is held to
    the stored cap; a cap given with a new figure is stored and announced again when reached; setting one kind
    leaves the other."""
    capped, uncapped = ledger(Cap(units=2)), None
    assert isinstance(reserve(spend, [capped], "b/a", 2), Reserved)
    uncapped = LedgerSpec(capped.key, None, capped.label)
    assert not isinstance(reserve(spend, [uncapped], "b/b", 1), Reserved)
    assert spend.read(capped.key).reached and spend.read(capped.key).cap == Cap(units=2)
    raised = LedgerSpec(capped.key, Cap(units=3), capped.label)
    assert isinstance(reserve(spend, [raised], "b/b", 1), Reserved) and not spend.read(capped.key).reached
    spend.set_cap(capped.key, Cap(money=50))
    assert spend.read(capped.key).cap == Cap(units=3, money=50)
    spend.clear_cap(capped.key)
    assert spend.read(capped.key).cap == Cap()


def test_a_money_cap_refuses_a_job_without_a_price(spend: Spend) -> None:
    """Under a money cap, a job whose model has no price cannot be admitted (its cost is unknown); without a
    money cap it can."""
    capped, free = ledger(Cap(money=10)), ledger(Cap(units=10))
    refused = reserve(spend, [capped], "b/j", 1, money=NO_PRICE)
    assert refused is not None and refused.no_price  # type: ignore[attr-defined]
    assert isinstance(reserve(spend, [free], "b/j", 1, money=NO_PRICE), Reserved)
    assert spend.read(free.key).committed_money == 0


def test_concurrent_admissions_never_overshoot_a_cap(redis_url: str) -> None:
    """Eight threads, each its own Redis client, reserve jobs of 1 to 4 units against a cap of 20 as fast as they
    can: what is committed never passes 20, and it is exactly the sum of the reservations taken."""
    key = "genq:spend:race:" + secrets.token_hex(4)
    taken: list[float] = []
    lock = threading.Lock()

    def admit(worker: int) -> None:
        mine = RedisSpend(redis.Redis.from_url(redis_url, decode_responses=True))
        for i in range(40):
            units = float(1 + (worker + i) % 4)
            spec = LedgerSpec(key, Cap(units=20), {"scope": "batch", "batch_id": "race"})
            answer = mine.reserve(
                [spec], f"race/{worker}-{i}", units=units, money=0, events=["{}"], event_stream="genq:e", maxlen=10
            )
            if isinstance(answer, Reserved):
                with lock:
                    taken.append(units)

    threads = [threading.Thread(target=admit, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = RedisSpend(redis.Redis.from_url(redis_url, decode_responses=True)).read(key)
    assert state.committed_units == sum(taken) <= 20 and sum(taken) >= 17  # the last 1-4 units may not fit


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle", "unknown", "cap"]),
        st.integers(0, 5),  # which job
        st.sampled_from([0.0, 1.0, 2.0, 4.0, 2.5]),  # units
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPERATIONS)
def test_both_ledgers_agree_and_never_pass_their_cap(redis_url: str, operations: list[tuple[str, int, float]]) -> None:
    """Any sequence of reservations, settlements and cap changes gives the same answers and figures in Redis and
    in memory, and a reservation never leaves a ledger past the cap it was checked against."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = "genq:spend:prop:" + secrets.token_hex(4)
    stores: list[Spend] = [RedisSpend(client), MemorySpend()]
    cap = 6.0
    for s in stores:
        s.set_cap(key, Cap(units=cap))
    held: dict[str, float] = {}  # the model: each job's reservation (a bill is never above it, as in genq)
    for kind, job, units in operations:
        ref = f"p/j{job}"
        if kind == "reserve":
            spec = LedgerSpec(key, None, {"scope": "batch", "batch_id": "p"})
            answers = [
                s.reserve(
                    [spec], ref, units=units, money=units / 2, events=["{}"], event_stream="genq:events:p", maxlen=10
                )
                for s in stores
            ]
            assert answers[0] == answers[1]
            if isinstance(answers[0], Reserved) and ref not in held:
                held[ref] = units
                assert stores[0].read(key).committed_units <= cap + 1e-9
        elif kind == "cap":
            cap = units + 3
            for s in stores:
                s.set_cap(key, Cap(units=cap))
        else:
            bill = -1.0 if kind == "unknown" else min(units, held.get(ref, 0.0))
            settled = [s.settle([key], ref, units=bill, money=bill / 2 if bill >= 0 else bill) for s in stores]
            assert settled[0] == settled[1]
            held.pop(ref, None)
        assert stores[0].read(key) == stores[1].read(key)
    client.close()


def test_a_ledger_lives_40_days_from_its_first_reservation_or_refusal(redis_url: str) -> None:
    """A ledger made by a single reservation, or by a refusal, expires (40 days): ledgers never pile up in Redis."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    spend = RedisSpend(client)
    once, refused = ledger(Cap(units=5)), ledger(Cap(money=1))
    assert isinstance(reserve(spend, [once], "b/j", 1), Reserved)
    assert not isinstance(reserve(spend, [refused], "b/j", 1, money=NO_PRICE), Reserved)
    assert 0 < client.ttl(once.key) <= 40 * 86400 and 0 < client.ttl(refused.key) <= 40 * 86400
    client.close()
