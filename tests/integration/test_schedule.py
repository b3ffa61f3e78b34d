"""Scheduled runs with real beats and workers: two beats, one firing; a replayed tick enqueues nothing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.schedules import ScheduleSettings
from ops.localstack import LocalStack
from ops.localstack.process import ManagedProcess
from ops.localstack.stack import child_env
from producer.nightly import run_date, scheduled_run
from tests.stage_runner import batch_done, wait_until
from workers.runtime import make_store
from workers.storage import ResultStore, make_minio

pytestmark = pytest.mark.integration


def test_two_beats_and_a_replayed_tick_run_each_input_once(
    local_stack_factory: Callable[..., LocalStack], tmp_path: Path
) -> None:
    """A schedule firing every minute over a folder of two CSVs, with two beat processes: no minute's tick fires
    twice, each file becomes one batch of the day whose jobs all succeed, the simulator sees one create per
    row, a tick replayed by hand enqueues nothing, and the day's report lists both inputs."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "north.csv").write_text("id,prompt\nn1,a lighthouse\nn2,a harbour\nn3,a cliff\n")
    (inbox / "south.csv").write_text("id,prompt\ns1,a dune\ns2,an oasis\n")
    schedule = ScheduleSettings(name="nightly", cron="* * * * *", source=str(inbox))
    stack = local_stack_factory(workers=1, simulator_profile="fast", schedules=(schedule,))
    second_beat = ManagedProcess(
        "beat-2",
        [sys.executable, "-c", "from producer.cli import main; main()", "beat"],
        log_path=stack.log_dir / "beat-2.log",
        env=child_env(stack.settings),
    )
    store = make_store(stack.settings)
    try:
        date = run_date(stack.settings, time.time())
        north, south = f"nightly-{date}-north", f"nightly-{date}-south"
        wait_until(lambda: batch_done(store, north)() and batch_done(store, south)(), 100, "the first tick's batches")
    finally:
        second_beat.stop()

    fired = [
        json.loads(line)["timestamp"][:16]  # to the minute
        for log in (stack.log_dir / "beat.log", stack.log_dir / "beat-2.log")
        for line in log.read_text().splitlines()
        if "Sending due task genq-schedule-nightly" in line
    ]
    assert fired and len(fired) == len(set(fired)), f"a tick fired twice: {fired}"

    results = ResultStore(make_minio(stack.settings), stack.settings.bucket)
    replay = scheduled_run(store, results, stack.settings, "nightly", lambda step: None)
    assert [(r.batch_id, r.accepted, r.skipped) for r in replay] == [
        (north, 0, "already run today"),
        (south, 0, "already run today"),
    ]
    for batch_id, total in ((north, 3), (south, 2)):
        summary = store.batch_summary(batch_id)
        assert summary is not None and summary.total == total and summary.counts == {"succeeded": total}
    upstream = stack.simulator_counters()
    assert upstream is not None and upstream["counters"]["creates"] == 5 and upstream["duplicate_creates"] == 0
    report = results.get_json(f"reports/nightly/{date}.json")
    assert report is not None and [i["batch_id"] for i in report["inputs"]] == [north, south]
