"""`genq billed` and `genq budget` on a Redis the test fills itself (the production form: only Redis is asked
for): the day's billed units per account and model with their cost, as a table and as JSON, a bad day refused
by name, and a batch's budget shown and changed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from producer.cli import app
from workers.billing import Bill, utc_day
from workers.job import Status, record_of
from workers.jobstore import NewJob, RedisJobStore
from workers.quota.spend import NO_PRICE, Cap, LedgerSpec, RedisSpend, Reserved, batch_ledger
from workers.refs import job_ref
from workers.requests import GenerationRequest

MODEL = "wan2.5-t2i-preview"


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {"GENQ_REDIS_URL": redis_url, "GENQ_PRICES": json.dumps({MODEL: 0.25}), "GENQ_PRICE_CURRENCY": "CNY"}


def billed_job(client: redis.Redis, batch_id: str, units: float) -> None:
    """A job of `batch_id` whose task succeeded and billed `units` today."""
    store = RedisJobStore(client)
    store.open_batch(batch_id, source="t")
    ref = job_ref(batch_id, "j")
    store.create_jobs([NewJob(ref, 1, MODEL, record_of(ref, 1, GenerationRequest(model=MODEL, prompt="p"), 0))])
    for status in (Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED):
        store.transition(ref, status, expected_attempt=None)
    store.transition(ref, Status.DOWNLOADING, expected_attempt=None, bill=Bill(units, "t1", "acct", MODEL, time.time()))


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env, terminal_width=200)


def test_billed_shows_the_days_units_and_their_cost(env: dict[str, str], redis_url: str) -> None:
    """Four images billed today on `acct`: the table shows them with 1.00 CNY at 0.25 each; the JSON gives the
    same figures; yesterday has nothing; a day that is not a date exits 2 naming it."""
    billed_job(redis.Redis.from_url(redis_url, decode_responses=True), "b1", 4)
    table = invoke(env, "billed")
    assert table.exit_code == 0, table.output
    assert "acct" in table.output and "4 images" in table.output and "1.00 CNY" in table.output
    shown = json.loads(invoke(env, "billed", "--json").output)
    assert shown == {
        "currency": "CNY",
        "billed": [{"day": utc_day(time.time()), "account": "acct", "model": MODEL, "units": 4.0, "cost": 1.0}],
    }
    yesterday = utc_day(time.time() - 86400)
    assert "nothing billed" in invoke(env, "billed", "--day", yesterday).output
    bad = invoke(env, "billed", "--day", "31/12/2026")
    assert bad.exit_code == 2 and "'31/12/2026' is not a day" in bad.output


def test_budget_shows_and_changes_a_batchs_cap(env: dict[str, str], redis_url: str) -> None:
    """`genq budget` shows a batch without a cap as such, sets one, changes only the kind given, refuses
    --no-cap with a figure (exit 2), and removes the cap; an unknown batch exits 2."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    billed_job(client, "b2", 2)
    assert "no budget cap" in invoke(env, "budget", "b2").output
    assert invoke(env, "budget", "b2", "--cap", "10").exit_code == 0
    assert invoke(env, "budget", "b2", "--cap-money", "5").exit_code == 0
    assert RedisSpend(client).read(batch_ledger("b2")).cap == Cap(units=10, money=5)
    both = invoke(env, "budget", "b2", "--no-cap", "--cap", "3")
    assert both.exit_code == 2 and "--no-cap" in both.output
    assert invoke(env, "budget", "b2", "--no-cap").exit_code == 0
    assert RedisSpend(client).read(batch_ledger("b2")).cap == Cap()
    assert invoke(env, "budget", "nope").exit_code == 2


def test_status_shows_a_reached_cap_and_a_money_cap_without_a_price(env: dict[str, str], redis_url: str) -> None:
    """A batch whose money cap refused a job of a model without a price: `genq status` shows the budget, that
    the cap was reached, and why (no price), with the command that raises it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    billed_job(client, "b3", 1)
    spend = RedisSpend(client)
    spec = LedgerSpec(batch_ledger("b3"), Cap(units=5, money=2), {"scope": "batch", "batch_id": "b3"})
    refused = spend.reserve([spec], "b3/x", units=1, money=NO_PRICE, events=["{}"], event_stream="e", maxlen=10)
    assert not isinstance(refused, Reserved)
    shown = " ".join(invoke(env, "status", "b3").output.split())
    assert "the batch's budget: committed" in shown and "0 of 5 units; 0.00 of 2.00 CNY" in shown
    assert "no price" in shown and "cap reached" in shown and "genq budget b3 --cap N" in shown


def test_a_cap_that_is_not_a_number_is_refused_before_anything_starts(env: dict[str, str], tmp_path: Any) -> None:
    """`genq batch --cap inf` ends with exit 2 naming the option, before any service is asked for."""
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("prompt\na fox\n", encoding="utf-8")
    result = invoke({**env, "GENQ_REDIS_URL": "redis://127.0.0.1:1/0"}, "batch", str(csv_file), "--cap", "inf")
    assert result.exit_code == 2 and "--cap must be a finite number" in result.output
