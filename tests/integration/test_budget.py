"""Budget caps against a real local stack: four Celery worker processes admitting at once never overshoot a
batch's cap, the jobs that do not fit wait with the reason shown, raising the cap lets them finish, and the
billed total is the same in `genq status`, the contact sheet, the events, the metrics and the simulator; a
nightly schedule under an account's daily cap stops at it and goes on the next day without paying twice."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from config.schedules import ScheduleSettings
from ops.localstack import LocalStack
from ops.localstack.stack import child_env
from producer.api import Genq
from producer.cli.display import billed_words
from producer.cli.report import render
from producer.scheduled_runs import scheduled_run
from tests.conftest import RunningSimulator, raw_redis
from tests.integration.test_metrics import scrape
from tests.stage_runner import run, wait_until
from workers.admission import dispatch_all
from workers.job import Next
from workers.runtime import Runtime

pytestmark = pytest.mark.integration
MODEL = "wan2.5-t2i-preview"


def genq_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`genq ARGS` in a process of its own, with the environment a user of this stack would have."""
    env = {**child_env(stack.settings), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from producer.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_cap_of_20_images_over_4_workers_creates_exactly_20_then_a_raised_cap_finishes_the_batch(
    local_stack_factory: Callable[..., LocalStack], genq_for: Callable[[LocalStack], Genq], tmp_path: Path
) -> None:
    """50 one-image jobs under a batch cap of 20 images, with 4 worker processes admitting into the slots that
    free: exactly 20 tasks are created upstream (the simulator counts them), the other 30 are held with the
    reason `genq status` shows and one cap-reached event (waiting, from Python or `genq batch`, stops there and
    says why); `genq budget --cap 50` lets all 50 finish; the billed
    total in status, the contact sheet, the events and the workers' metrics equals the simulator's."""
    stack = local_stack_factory(workers=4, metrics=True, simulator_profile="fast")
    genq = genq_for(stack)
    batch = genq.submit([{"prompt": f"a fox {i}", "n": 1} for i in range(50)], batch_id="cap", cap_units=20)
    assert batch.accepted == 50

    def capped() -> bool:
        summary = genq.status("cap")
        return summary.counts.get("succeeded", 0) == 20 and genq.budget("cap").held == 30

    wait_until(capped, 120, "20 jobs to succeed and 30 to be held")
    time.sleep(2)  # a worker that overshot would show it now
    counters = stack.simulator_counters()
    assert counters is not None and counters["counters"]["creates"] == 20 and counters["billed_images"] == 20
    assert genq.status("cap").counts == {"succeeded": 20, "accepted": 30}
    shown = genq_cli(stack, "status", "cap")
    assert shown.returncode == 0, shown.stderr
    flat = " ".join(shown.stdout.split())
    assert "20 of 20 units" in flat and "cap reached: 30 job(s) wait" in flat and "genq budget cap --cap N" in flat
    reached = [e for e in genq.events("cap") if e["type"] == "genq.budget.cap_reached"]
    assert len(reached) == 1 and reached[0]["data"]["scope"] == "batch"
    assert not genq.wait("cap", timeout_s=60).done  # it stops waiting at once: nothing can go on by itself
    assert genq.stalled("cap") == "30 job(s) held by the batch's budget cap: raise it (genq budget cap --cap N)"
    csv_file = tmp_path / "more.csv"
    csv_file.write_text("prompt,n\na hare,1\na heron,1\na wolf,1\n", encoding="utf-8")
    stopped = genq_cli(stack, "batch", str(csv_file), "--batch-id", "more", "--cap", "2", "--timeout", "60")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "stopped waiting: 1 job(s) held by the batch's budget cap" in " ".join(stopped.stdout.split())

    raised = genq_cli(stack, "budget", "cap", "--cap", "50")
    assert raised.returncode == 0, raised.stderr
    assert genq.wait("cap", timeout_s=120).done
    counters = stack.simulator_counters()
    assert counters is not None and counters["counters"]["creates"] == 52 and counters["duplicate_creates"] == 0
    assert counters["billed_images"] == 52  # 50 of this batch, 2 of the batch `genq batch` stopped at its cap
    billed = 50.0
    assert genq.status("cap").billed == {MODEL: billed} and genq.status("more").billed == {MODEL: 2.0}
    status = json.loads(genq_cli(stack, "status", "cap", "--json").stdout)
    assert status["billed"] == {MODEL: billed} and status["budget"]["committed_units"] == billed
    events = genq.events("cap")
    assert sum(e["data"]["billed_units"] for e in events if e["type"] == "genq.job.succeeded") == billed
    assert [e["data"]["billed"] for e in events if e["type"] == "genq.batch.finished"][-1] == {MODEL: billed}
    words = functools.partial(billed_words, settings=stack.settings)
    page, _ = render(genq.store, genq.results, "cap", billed_text=words)
    assert f'<span id="billed">{billed:g} images of {MODEL} (no price)</span>' in page
    assert scrape(stack.metrics_urls)["genq_billed_units_total"] == counters["billed_images"]


def test_a_nightly_schedule_stops_at_the_daily_cap_and_goes_on_the_next_day_without_paying_twice(
    runtime_factory: Callable[..., Runtime], simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A nightly schedule's input of 8 one-image jobs on an account capped at 5 images a day: the first night's
    run creates 5 tasks and the rest wait in line (not failed); the next day (the clock moved on a day) they are
    admitted and finish; every job was created once (8 creates, no duplicate), and the day's totals say 5, then 3."""
    source = tmp_path / "in"
    source.mkdir()
    (source / "nightly.csv").write_text("prompt,n\n" + "".join(f"a heron {i},1\n" for i in range(8)), encoding="utf-8")
    schedule = ScheduleSettings(name="nightly", cron="0 2 * * *", source=str(source))
    rt = runtime_factory(daily_cap_units=5.0, schedules=(schedule,))
    sent: list[Next] = []
    (report,) = scheduled_run(
        rt.store, rt.quota, rt.results, rt.settings, "nightly", lambda s: sent.append(s) if s else None
    )
    assert report.accepted == 8
    run(rt, sent, timeout_s=30)
    counts = rt.store.batch_summary(report.batch_id)
    assert counts is not None and counts.counts == {"succeeded": 5, "accepted": 3}
    assert simulator.counters()["creates"] == 5

    tomorrow = time.time() + 86400
    rt.clock = lambda: time.time() + 86400
    steps: list[Next] = []
    dispatch_all(rt.store, rt.quota, rt.settings, lambda s: steps.append(s) if s else None, now=tomorrow)
    run(rt, steps, timeout_s=30)
    counts = rt.store.batch_summary(report.batch_id)
    assert counts is not None and counts.counts == {"succeeded": 8}
    upstream = httpx.get(f"{simulator.url}/_sim/counters", timeout=10).json()
    assert upstream["counters"]["creates"] == 8 and upstream["duplicate_creates"] == 0
    assert upstream["billed_images"] == 8
    days = raw_redis(rt.settings).keys("genq:billed:*")
    assert sorted(float(v) for d in days for v in raw_redis(rt.settings).hgetall(d).values()) == [3.0, 5.0]
