"""The Python API's entrance (`producer/api.py`) is total: whatever a caller passes as requests, every one is
accepted as a job or returned as a rejection naming its position, field and reason, recorded with the batch,
and the rest goes on; only a call that cannot mean anything raises. Examples, then a property-based test.

The client runs on the in-memory store and quota (`Genq(..., runtime=...)`, the embedding seam): what it
enqueues is collected instead of sent, and no service is called.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import Settings
from producer.api import AsyncGenq, Genq, Rejection, Request
from producer.services import Configured
from workers.bucket import MemoryBucket
from workers.dashscope import DashScopeClient
from workers.job import Next
from workers.jobstore import MemoryJobStore
from workers.quota.quota import Quota
from workers.quota.spend import Cap
from workers.runtime import Runtime

MODEL = "wan2.5-t2i-preview"


def offline_genq() -> tuple[Genq, list[Next]]:
    """A client on the memory store and quota; its admitted jobs' first steps are collected, never run."""
    settings = Settings()
    refused = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(599)))
    sent: list[Next] = []
    runtime = Runtime(
        settings=settings,
        store=MemoryJobStore(),
        dashscope=DashScopeClient(refused, base_url="https://dashscope.invalid/api/v1", api_key="sk-none"),
        results=MemoryBucket(),
        downloads=refused,
        quota=Quota.memory(),
        rng=random.Random(1),
    )
    runtime.send = lambda step: sent.append(step) if step else None
    return Genq(Configured(settings), runtime=runtime), sent


def test_bad_requests_come_back_as_rejections_and_the_rest_is_accepted() -> None:
    """Each kind of bad request is a rejection with its position, field and reason (recorded with the batch),
    and the good ones around them become jobs."""
    genq, _ = offline_genq()
    requests: list[Any] = [
        {"prompt": "a fox"},
        {"prompt": "a dog", "n": 1.5},
        {"prompt": ["a", "list"]},
        "a prompt on its own",
        {1: "a key that is not text"},
        {"prompt": "a cat", "model": "dall-e-3"},
        Request(prompt="a heron", n=2, watermark=False, metadata={"shoot": "7"}),
        {"prompt": "", "n": None},
        {"prompt": "a \ud800 surrogate"},
        {"prompt": "a fox", "seed": 10**5000},
    ]
    submitted = genq.submit(requests, batch_id="mixed")
    assert submitted.accepted == 2 and submitted.images == 3
    by_index = {r.index: r for r in submitted.rejected}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 7, 8, 9]
    assert by_index[8] == Rejection(8, "prompt", "is not valid text (it holds a lone surrogate)")
    assert by_index[9].field == "seed" and "too long" in by_index[9].reason
    assert by_index[1].field == "n" and "integer" in by_index[1].reason
    assert by_index[2] == Rejection(2, "prompt", "must be text, a number or a boolean, got list")
    assert by_index[3].field == "request" and "mapping" in by_index[3].reason
    assert by_index[4].field == "request" and "field names must be text" in by_index[4].reason
    assert by_index[5].field == "model" and "dall-e-3" in by_index[5].reason
    assert by_index[7].field == "prompt"
    assert [r["line"] for r in genq.store.rejected("mixed")] == [2, 3, 4, 5, 6, 8, 9, 10]  # positions from 1


def test_the_same_requests_again_make_the_same_batch_and_nothing_new() -> None:
    """Without a batch id, the same requests name the same batch: submitting them again creates nothing."""
    genq, sent = offline_genq()
    first = genq.submit([{"prompt": "a fox"}, {"prompt": "a fox"}])
    again = genq.submit([{"prompt": "a fox"}, {"prompt": "a fox"}])
    assert first.batch_id == again.batch_id and first.batch_id.startswith("py-")
    assert (first.accepted, again.accepted, again.existing) == (2, 0, {"admitted": 2})
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"batch_id": "no spaces please"}, "batch id"),
        ({"priority": 10}, "priority"),
        ({"cap_units": math.nan}, "cap_units"),
        ({"cap_money": -1.0}, "cap_money"),
    ],
)
def test_a_call_that_cannot_mean_anything_raises_value_error(options: dict[str, Any], says: str) -> None:
    """A bad batch id, priority or cap is the caller's mistake, not a request's: `ValueError` naming it, and
    nothing is enqueued."""
    genq, sent = offline_genq()
    with pytest.raises(ValueError, match=says):
        genq.submit([{"prompt": "a fox"}], **options)
    assert sent == [] and genq.store.batch_ids() == []


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.text(st.characters(categories=["Cs", "Ll"]), max_size=4)  # lone surrogates: not encodable text
)
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=5), scalars, max_size=2)
keys = st.sampled_from(["prompt", "n", "size", "seed", "model", "negative_prompt", "watermark", "duration", "id"])
request = (
    st.dictionaries(keys | st.text(max_size=8), values, max_size=6)
    | st.builds(Request, prompt=st.text(max_size=40), n=st.none() | st.integers(-2, 6))
    | scalars
    | st.dictionaries(st.integers(), values, max_size=2)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request, max_size=12))
def test_any_requests_are_each_accepted_or_rejected_with_a_reason(requests: list[Any]) -> None:
    """Arbitrary requests (mappings of any keys and values, `Request`s, scalars): `submit` never raises, and
    every request is a new job, one already made, or a rejection with its position, a field and a reason,
    recorded with the batch."""
    genq, _ = offline_genq()
    submitted = genq.submit(requests, batch_id="fuzz")
    assert submitted.accepted + sum(submitted.existing.values()) + len(submitted.rejected) == len(requests)
    for rejection in submitted.rejected:
        assert 0 <= rejection.index < len(requests) and rejection.field and rejection.reason
    assert len(genq.store.rejected("fuzz")) == len(submitted.rejected)


def test_the_asyncio_flavour_gives_the_same_answers() -> None:
    """`AsyncGenq` over the same client: submitting, reading the status, the budget and the events, waiting
    (which returns at its timeout), changing the cap, cancelling and retrying (a cancelled job is not) answer
    as `Genq` does."""
    genq, sent = offline_genq()

    async def use() -> None:
        client = AsyncGenq(genq)
        batch = await client.submit([{"prompt": "a fox"}, {"prompt": "a dog", "n": 9}], batch_id="aio", cap_units=8)
        assert batch.accepted == 1 and [r.field for r in batch.rejected] == ["n"]
        assert (await client.status("aio")).counts == {"admitted": 1}
        seen: list[int] = []
        waited = await client.wait("aio", timeout_s=0, progress=lambda s: seen.append(s.total))
        assert not waited.done and seen == [1]
        assert await client.stalled("aio") is None  # a job is under way
        budget = await client.set_budget("aio", cap_money=3.0)
        assert budget.ledger.cap == Cap(units=8.0, money=3.0) and budget.held == 0
        assert (await client.budget("aio")).ledger.committed_units == 1
        assert (await client.day_budget("default")).committed_units == 1
        assert [j.job_id for j in await client.jobs("aio")] == [next(iter(genq.store.jobs("aio"))).job_id]
        assert await client.events("aio") == []
        cancelled = await client.cancel("aio")
        assert len(cancelled.changed) == 1
        retried = await client.retry("aio")
        assert retried.changed == []  # only failed, timed-out and expired jobs are retried
        removed = await client.set_budget("aio", remove=True)
        assert removed.ledger.cap == Cap()

    asyncio.run(use())
    assert len(sent) == 1  # the one admission


def test_set_budget_refuses_a_cap_given_with_remove_and_waits_with_a_progress_bar(capsys: Any) -> None:
    """`remove` with a figure is a contradiction (ValueError); `wait(progress=True)` draws its bar on stderr."""
    genq, _ = offline_genq()
    genq.submit([{"prompt": "a fox"}], batch_id="bar")
    with pytest.raises(ValueError, match="remove"):
        genq.set_budget("bar", cap_units=1, remove=True)
    assert not genq.wait("bar", timeout_s=0, progress=True).done
    assert "batch bar" in capsys.readouterr().err
