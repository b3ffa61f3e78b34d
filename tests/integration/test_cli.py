"""The `genq` commands that act on batches already in the store (status, report, retry, cancel, resume,
run-schedule), run through the command line in-process (typer's runner) against this test's Redis, S3 and
simulator, so that they start nothing; what each did is checked in the job store and the bucket, not only in
what it printed."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from click.testing import Result
from typer.testing import CliRunner

from config.settings import MIN_RETENTION_S
from ops.localstack.stack import child_env
from producer.cli import app, common
from producer.cli.display import PlainConsole
from tests.conftest import RunningSimulator, raw_redis
from tests.stage_runner import enqueue, run
from workers import account_pause
from workers.job import Status
from workers.retention import purge_finished
from workers.runtime import Runtime

Genq = Callable[..., Result]


@pytest.fixture
def genq(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Genq:
    """`genq ARGS...` in-process, with the environment a user of this test's services would have."""
    for name in list(os.environ):
        if name.startswith(("GENQ_", "DASHSCOPE_")):
            monkeypatch.delenv(name)
    for name, value in child_env(runtime.settings).items():
        if name.startswith(("GENQ_", "DASHSCOPE_")):
            monkeypatch.setenv(name, value)
    # Consoles of a known shape, whatever the terminal, COLUMNS or FORCE_COLOR were when producer.cli.common was
    # imported: wide enough that no table cell is wrapped, and no colour codes inside the lines the test reads.
    for name, stderr in (("console", False), ("errors", True)):
        plain = PlainConsole(stderr=stderr, width=250, height=50, color_system=None, force_terminal=False)
        monkeypatch.setattr(common, name, plain)

    def invoke(*args: str) -> Result:
        # The command configures logging for itself (structlog, the root handler on the runner's stderr, which
        # is closed once it returns, and quieter HTTP loggers): put this process's configuration back after it.
        root, quieted = logging.getLogger(), [logging.getLogger(n) for n in ("httpx", "httpcore", "urllib3")]
        handlers, levels, structlog_config = (
            root.handlers[:],
            [q.level for q in (root, *quieted)],
            structlog.get_config(),
        )
        try:
            return CliRunner().invoke(app, list(args), catch_exceptions=False)
        finally:
            root.handlers[:] = handlers
            for logger, level in zip((root, *quieted), levels, strict=True):
                logger.setLevel(level)
            structlog.configure(**structlog_config)

    return invoke


def three_jobs(rt: Runtime) -> None:
    """Batch `b`: `ok` succeeds, `mod` fails moderation (permanent), `flaky` fails transiently past its resubmits."""
    rows = (
        {"id": "ok", "prompt": "a cat"},
        {"id": "mod", "prompt": "a dog sim:task_inspection"},
        {"id": "flaky", "prompt": "a fox sim:task_timeout"},
    )
    run(rt, enqueue(rt, *rows), timeout_s=60)
    statuses = {job.job_id: job.status for job in rt.store.jobs("b")}
    assert statuses == {"ok": Status.SUCCEEDED, "mod": Status.FAILED, "flaky": Status.FAILED}


def test_status_shows_failed_jobs_and_a_paused_account_which_resume_lifts(
    runtime: Runtime, simulator: RunningSimulator, genq: Genq
) -> None:
    """`genq status` lists each job that did not succeed with its code, and names a paused account with the
    command that lifts the pause; `genq resume` lifts it (and says so when there was none); an unknown batch
    exits 2 naming the batches there are."""
    three_jobs(runtime)
    account_pause.pause(runtime.store, "default", code="Arrears", message="the account is overdue", now=time.time())

    shown = genq("status", "b")
    assert shown.exit_code == 0, shown.output
    failed = {line.split("│")[2].strip(): line for line in shown.stdout.splitlines() if line.count("│") == 6}
    assert "DataInspectionFailed" in failed["mod"] and "InternalError.Timeout" in failed["flaky"]
    assert "ok" not in failed
    assert "account default is PAUSED since Arrears: the account is overdue (fix it, then: genq resume default)" in (
        shown.stdout
    )

    lifted = genq("resume", "default")
    assert lifted.exit_code == 0 and "account default resumed" in lifted.stdout
    assert account_pause.paused(runtime.store, "default") is None
    assert "account default was not paused" in genq("resume", "default").stdout
    assert "PAUSED" not in genq("status", "b").stdout

    unknown = genq("status", "nope")
    assert unknown.exit_code == 2 and "no batch 'nope' (recent batches: b)" in unknown.stderr


def test_report_writes_the_contact_sheet_to_the_bucket_and_a_file(
    runtime: Runtime, simulator: RunningSimulator, genq: Genq, tmp_path: Path
) -> None:
    """`genq report --out` stores the batch's HTML page in the bucket as `b/report.html` and writes the same page
    to the file; it counts the jobs and images it shows."""
    three_jobs(runtime)
    page_path = tmp_path / "sheet.html"
    made = genq("report", "b", "--out", str(page_path))
    assert made.exit_code == 0, made.output
    assert f"report of 3 jobs, 1 images: s3://{runtime.settings.bucket}/b/report.html and {page_path}" in " ".join(
        made.stdout.split()
    )
    page = page_path.read_text(encoding="utf-8")
    assert "a cat" in page and "DataInspectionFailed" in page
    stored = runtime.results.client.get_object(runtime.settings.bucket, "b/report.html")
    try:
        assert stored.read().decode() == page
    finally:
        stored.close()
        stored.release_conn()


def test_retry_sends_transient_failures_again_and_cancel_ends_them(
    runtime: Runtime, simulator: RunningSimulator, genq: Genq
) -> None:
    """`genq retry --failed --no-wait` revives the transient failure and says why the moderation failure stays
    failed; `genq cancel` then ends the revived job canceled and leaves the ended ones as they were."""
    three_jobs(runtime)
    creates = simulator.counters()["creates"]
    retried = genq("retry", "b", "--failed", "--no-wait")
    assert retried.exit_code == 0, retried.output
    assert "retrying 1 jobs; 1 skipped" in retried.stdout and "b/mod:" in retried.stdout
    flaky = runtime.store.get("b/flaky")
    assert flaky is not None and not flaky.terminal
    assert queued_submits(runtime) == ["b/flaky"]  # its submit waits in the broker's queue: no worker here

    canceled = genq("cancel", "b")
    assert canceled.exit_code == 0, canceled.output
    assert "canceled 1 jobs" in canceled.stdout
    statuses = {job.job_id: job.status for job in runtime.store.jobs("b")}
    assert statuses == {"ok": Status.SUCCEEDED, "mod": Status.FAILED, "flaky": Status.CANCELED}
    assert simulator.counters()["creates"] == creates  # nothing was created for the retried job: no worker ran it


def test_purge_refuses_under_25_h_and_says_what_it_removed(runtime: Runtime, genq: Genq, tmp_path: Path) -> None:
    """`genq purge --older-than 2h` is refused (exit 2, saying why, with no override) and removes nothing, and so
    are a duration it cannot read and one over ten years; without --older-than the retention of the `--config`
    file is the cut-off and what was removed is printed; once the retention has passed the ended jobs go, and
    `genq status` of their (reopened) batch still counts them and says they were purged."""
    run(runtime, enqueue(runtime, {"id": "ok", "prompt": "a cat"}, {"id": "also", "prompt": "a dog"}), timeout_s=60)
    refused = genq("purge", "--older-than", "2h")
    assert refused.exit_code == 2 and "24 h upstream" in refused.stderr
    assert genq("purge", "--older-than", "0", "--force").exit_code == 2  # there is no override
    unreadable = genq("purge", "--older-than", "2 weeks")
    assert unreadable.exit_code == 2 and "not a duration" in unreadable.stderr
    for endless in ("99999999d", "nan", "1e309", "\u0661\u0662\u0663"):
        assert genq("purge", "--older-than", endless).exit_code == 2, endless
    assert len(list(runtime.store.jobs("b"))) == 2

    config = tmp_path / "genq.toml"
    config.write_text("retention_s = 100000\n")
    kept = genq("purge", "--config", str(config))
    assert kept.exit_code == 0, kept.output
    said = re.search(r"purged 0 jobs and 0 batches that ended before (\S+)", kept.stdout)
    assert said is not None, kept.stdout
    cutoff = datetime.fromisoformat(said[1]).timestamp()
    assert abs(cutoff - (time.time() - 100_000)) < 120

    runtime.store.open_batch("b", source="more rows")  # reopened for more: the batch stays, its ended jobs go
    later = time.time() + MIN_RETENTION_S + 60  # the CLI reads the real clock: the store is purged a day on
    purged = purge_finished(runtime.store, MIN_RETENTION_S, now=later)
    assert (purged.jobs, purged.batches) == (2, 0) and list(runtime.store.jobs("b")) == []
    shown = genq("status", "b")
    assert shown.exit_code == 0 and "2 of these jobs ended longer ago than the retention" in shown.stdout
    assert "succeeded" in shown.stdout


def queued_submits(rt: Runtime) -> list[str]:
    """The jobs whose `genq.submit` message waits in the broker's `submit` queue (kombu's Redis lists, one per
    priority step), read from the message headers Celery writes."""
    refs = []
    for queue in raw_redis(rt.settings).scan_iter(match="submit*", _type="LIST"):
        for raw in raw_redis(rt.settings).lrange(queue, 0, -1):
            headers = json.loads(raw)["headers"]
            if headers["task"] == "genq.submit":
                refs.append(ast.literal_eval(headers["kwargsrepr"])["ref"])
    return refs


def test_run_schedule_reads_a_bucket_source_and_reports_an_unreadable_one(
    runtime: Runtime, simulator: RunningSimulator, genq: Genq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`genq run-schedule` on an `s3://` source enqueues each CSV under the prefix as its own batch (once a day:
    the second tick finds it already run); a source whose bucket does not exist is that tick's note, not a crash;
    an unknown schedule exits 2."""
    bucket = runtime.settings.bucket
    csv_text = b"prompt\na lighthouse\na harbour\n"
    runtime.results.client.put_object(bucket, "inputs/day.csv", io.BytesIO(csv_text), len(csv_text))
    schedules = [
        {"name": "nightly", "cron": "0 3 * * *", "source": f"s3://{bucket}/inputs/"},
        {"name": "broken", "cron": "0 3 * * *", "source": "s3://no-such-bucket-genq/in/"},
    ]
    monkeypatch.setenv("GENQ_SCHEDULES", json.dumps(schedules))

    first = genq("run-schedule", "nightly")
    assert first.exit_code == 0, first.output
    row = next(line for line in first.stdout.splitlines() if "day.csv" in line)
    source, batch_id, accepted = (cell.strip() for cell in row.split("│")[1:4])
    assert source == f"s3://{bucket}/inputs/day.csv" and accepted == "2"
    assert [job.request.prompt for job in runtime.store.jobs(batch_id)] == ["a lighthouse", "a harbour"]
    again = genq("run-schedule", "nightly")
    assert "already run today" in again.stdout and len(list(runtime.store.jobs(batch_id))) == 2

    broken = genq("run-schedule", "broken")
    assert broken.exit_code == 0, broken.output
    assert "source unreadable" in broken.stdout and "NoSuchBucket" in broken.stdout

    missing = genq("run-schedule", "weekly")
    assert missing.exit_code == 2 and "weekly" in missing.stderr
