"""Scheduled runs with real beats and workers: two beats, one firing; a replayed tick enqueues nothing."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redbeat.decoder import RedBeatJSONEncoder

from config.celery_app import create_app
from config.schedules import ScheduleSettings
from ops.localstack import LocalStack
from ops.localstack.process import ManagedProcess
from ops.localstack.stack import child_env
from producer.scheduled_runs import batch_id_for, run_date, scheduled_run
from tests.stage_runner import batch_done, wait_until
from workers import refs
from workers.bucket import ResultBucket, make_minio
from workers.messages import publish
from workers.runtime import Runtime, make_quota, make_store

pytestmark = pytest.mark.integration


def test_two_beats_and_a_replayed_tick_run_each_input_once(
    local_stack_factory: Callable[..., LocalStack], tmp_path: Path
) -> None:
    """A schedule firing every minute over a folder of two CSVs, with two beat processes, and a tick made due at
    once (no waiting for the minute): while both beats run only the one holding the lock sends anything, no
    minute's tick fires twice, each file becomes one batch of the day whose jobs all succeed, the simulator sees
    one create per row, a tick replayed by hand enqueues nothing, and the day's report lists both inputs."""
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
    started, overlap_s = time.time(), 6.0
    logs = (stack.log_dir / "beat.log", stack.log_dir / "beat-2.log")
    try:
        tick_now(stack, "nightly")

        def ids_at(moment: float) -> tuple[str, str]:
            date = run_date(stack.settings, moment)
            return batch_id_for("nightly", date, str(inbox / "north.csv")), batch_id_for(
                "nightly", date, str(inbox / "south.csv")
            )

        def first_tick_done() -> bool:
            # The tick's date is the one of the moment it fired: before or after a midnight met while waiting.
            return any(all(batch_done(store, b)() for b in ids_at(m)) for m in (started, time.time()))

        wait_until(first_tick_done, 100, "the first tick's batches")
        # Both beats up for three periods of the 2 s webhook entry: a beat sending without the lock would have.
        wait_until(lambda: all(starts(log) for log in logs), 90, "both beats")
        both_up = max(starts(log)[0] for log in logs)
        time.sleep(max(0.0, both_up + overlap_s - time.time()))
        both_up_at, second_stopped = (datetime.fromtimestamp(t, UTC).isoformat()[:23] for t in (both_up, time.time()))
    finally:
        second_beat.stop()
    tick_at = next(m for m in (started, time.time()) if all(batch_done(store, b)() for b in ids_at(m)))
    north, south = ids_at(tick_at)
    date = run_date(stack.settings, tick_at)

    sent = {log.name: [json.loads(x) for x in read(log).splitlines() if "Sending due task" in x] for log in logs}
    fired = [e["timestamp"][:16] for entries in sent.values() for e in entries if "genq-schedule-nightly" in e["event"]]
    assert fired and len(fired) == len(set(fired)), f"a tick fired twice: {fired}"  # to the minute
    # While both ran, one beat sent every entry (sweep, webhooks, the schedule): the one holding redbeat's lock.
    both = {
        name: [e for e in entries if both_up_at <= e["timestamp"] < second_stopped] for name, entries in sent.items()
    }
    senders = [name for name, entries in both.items() if entries]
    assert len(senders) == 1, f"both beats sent while both ran, or neither: {senders}"
    assert sum("genq-webhooks" in e["event"] for e in both[senders[0]]) >= 2  # the window was long enough to see

    results = ResultBucket(make_minio(stack.settings), stack.settings.bucket)
    replay = scheduled_run(
        store, make_quota(stack.settings), results, stack.settings, "nightly", lambda step: None, now=tick_at
    )
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


def read(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def starts(log: Path) -> list[float]:
    """When a beat logged its start (epoch seconds), from its JSON log lines."""
    return [
        datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
        for line in read(log).splitlines()
        if line.startswith("{") and '"beat: Starting..."' in line
    ]


def tick_now(stack: LocalStack, name: str) -> None:
    """Make beat's entry for schedule `name` due now, as redbeat records a tick missed while no beat ran (its last
    run two minutes ago): the beat holding the lock fires it at its next wake-up (every 5 s at most), not at the
    next minute. The entry is written by the beat itself as it starts; wait for it. An entry that has fired
    already (redbeat then counts its runs) is left alone: made due again, it would fire twice in one minute."""
    client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    key = f"redbeat:genq-schedule-{name}"  # redbeat's default prefix, which genq keeps
    try:
        wait_until(lambda: bool(client.hexists(key, "meta")), 90, "beat's schedule entry")
        two_minutes_ago = json.dumps({"last_run_at": datetime.now(UTC) - timedelta(minutes=2)}, cls=RedBeatJSONEncoder)
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if "total_run_count" in json.loads(pipe.hget(key, "meta") or "{}"):
                        return  # it fired on its own first
                    pipe.multi()
                    pipe.hset(key, "meta", two_minutes_ago)
                    pipe.zadd("redbeat::schedule", {key: time.time()})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # beat wrote it meanwhile: look again
    finally:
        client.close()


def test_a_days_hostile_inputs_are_reported_and_the_good_ones_run_once(
    local_stack_factory: Callable[..., LocalStack], tmp_path: Path
) -> None:
    """A day's inputs: a good file, one with a 5,000-digit `n` in one row, one with a bad byte after row 1,000,
    and two whose names slug alike. Each good input (and the good rows of the first) runs as its own sealed
    batch; the unreadable file opens no batch and is in the day's report with its reason; a second tick
    creates nothing upstream and changes neither a batch nor the day's report."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.csv").write_text("prompt\na lighthouse\na harbour\n")
    (inbox / "big-n.csv").write_text("prompt,n\na dune,1\nan oasis," + "9" * 5000 + "\n")
    rows = "".join(f"prompt {i}\n" for i in range(1000))
    (inbox / "bad-byte.csv").write_bytes(b"prompt\n" + rows.encode() + b"caf\xe9\n")
    (inbox / "b c.csv").write_text("prompt\na cliff\n")
    (inbox / "b-c.csv").write_text("prompt\na cove\n")
    schedule = ScheduleSettings(name="daily", cron="0 3 * * *", source=str(inbox))
    stack = local_stack_factory(workers=1, simulator_profile="fast", schedules=(schedule,))
    store = make_store(stack.settings)
    results = ResultBucket(make_minio(stack.settings), stack.settings.bucket)
    results.ensure_bucket()

    celery, now = create_app(stack.settings), time.time()
    ticked = scheduled_run(
        store, make_quota(stack.settings), results, stack.settings, "daily", lambda step: publish(celery, step), now=now
    )
    runs = {Path(r.source).name: r for r in ticked}
    assert len({r.batch_id for r in runs.values()}) == 5, "two inputs share a batch id"
    assert (runs["good.csv"].accepted, runs["big-n.csv"].accepted, runs["big-n.csv"].rejected) == (2, 1, 1)
    assert (runs["b c.csv"].accepted, runs["b-c.csv"].accepted) == (1, 1)
    unreadable = runs["bad-byte.csv"]
    assert unreadable.accepted == 0 and "not UTF-8" in unreadable.skipped and "line 1002" in unreadable.skipped
    assert store.batch_summary(unreadable.batch_id) is None, "an unreadable input opened a batch"
    ran = [r.batch_id for r in runs.values() if r is not unreadable]
    wait_until(lambda: all(batch_done(store, b)() for b in ran), 120, "the day's batches")
    assert all((s := store.batch_summary(b)) is not None and s.sealed for b in store.batch_ids())

    date = run_date(stack.settings, now)
    report = results.get_json(f"reports/daily/{date}.json")
    assert report is not None
    noted = {Path(i["source"]).name: i for i in report["inputs"]}
    assert "not UTF-8" in noted["bad-byte.csv"]["skipped"] and noted["big-n.csv"]["rejected"] == 1
    rejected = store.rejected(runs["big-n.csv"].batch_id)
    assert [(r["line"], r["field"]) for r in rejected] == [(3, "n")] and "5,000" in rejected[0]["reason"]

    before = stack.simulator_counters()
    replay = scheduled_run(store, make_quota(stack.settings), results, stack.settings, "daily", lambda s: None, now=now)
    assert results.get_json(f"reports/daily/{date}.json") == report, "the replay changed the day's report"
    assert sum(r.accepted for r in replay) == 0
    assert sorted(r.skipped.split(":")[0] for r in replay if r.source.endswith("bad-byte.csv")) == [
        str(inbox / "bad-byte.csv")
    ]
    assert {r.batch_id: r.skipped for r in replay if r is not None and "bad-byte" not in r.source} == {
        b: "already run today" for b in ran
    }
    after = stack.simulator_counters()
    assert before is not None and after is not None
    assert after["counters"]["creates"] == before["counters"]["creates"] == 5 and after["duplicate_creates"] == 0


_EXAMPLES = itertools.count()
file_names = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"), min_size=1, max_size=60
).filter(lambda name: name not in {".", ".."})


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(file_names, min_size=1, max_size=4, unique_by=str.lower))
def test_any_file_names_of_a_day_run_as_their_own_batches(
    runtime: Runtime, tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    """Inputs with arbitrary names (spaces, Unicode, dots, brackets, names that slug alike) each run as a batch
    of their own with a valid id, or are reported with a reason; the tick raises nothing and stores its report."""
    inbox = tmp_path_factory.mktemp("inbox")
    for index, name in enumerate(names):
        (inbox / f"{name}.csv").write_text(f"prompt\na lighthouse {index}\n", encoding="utf-8")
    name = f"s{next(_EXAMPLES)}"  # the Redis and bucket of the test are shared by its examples
    settings_ = runtime.settings.model_copy(
        update={"schedules": (ScheduleSettings(name=name, cron="0 3 * * *", source=str(inbox)),)}
    )
    runs = scheduled_run(
        runtime.store, runtime.quota, runtime.results, settings_, name, lambda step: None, now=1_800_000_000.0
    )
    assert len(runs) == len(names)
    assert len({r.batch_id for r in runs}) == len(runs) and all(refs.is_id(r.batch_id) for r in runs)
    assert all(r.accepted == 1 or r.skipped for r in runs)
    report = runtime.results.get_json(f"reports/{name}/{run_date(settings_, 1_800_000_000.0)}.json")
    assert report is not None and len(report["inputs"]) == len(names)
