"""The whole chain with nothing mocked: Celery worker subprocesses, Redis, the S3 server and the simulator,
all started by genq's local stack on free ports, checked from the outside (bucket, event stream, simulator)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ops.localstack import LocalStack
from ops.localstack.process import free_port
from producer.csv_source import read_rows
from tests.conftest import images_shown, raw_redis
from tests.stage_runner import batch_done, publish_rows, wait_until
from workers.bucket import ResultBucket, make_minio
from workers.job import TERMINAL

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "prompts.csv"
pytestmark = pytest.mark.integration


def test_celery_workers_take_a_csv_batch_to_stored_results(local_stack_factory: Callable[..., LocalStack]) -> None:
    """Every valid sample row ends succeeded through real workers: objects match their sha256, one event per job,
    one upstream task per job, and no more tasks ever ran at once than the model allows."""
    local_stack = local_stack_factory(workers=2, simulator_profile="fast", worker_concurrency=3)
    settings = local_stack.settings
    results = ResultBucket(make_minio(settings), settings.bucket)
    results.ensure_bucket()
    store, report = publish_rows(local_stack, "sample", list(read_rows(SAMPLE)))
    assert report.accepted == 12 and [r["line"] for r in report.rejected] == [15, 16, 17]

    wait_until(batch_done(store, "sample"), 120, "the batch to finish")
    summary = store.batch_summary("sample")
    assert summary is not None and summary.counts == {"succeeded": 12}

    jobs = list(store.jobs("sample"))
    for job in jobs:
        for obj in job.objects:
            data = results.client.get_object(settings.bucket, obj["key"]).read()
            assert hashlib.sha256(data).hexdigest() == obj["sha256"]
        assert results.get_json(f"{job.ref}/manifest.json") is not None
    assert sum(len(j.objects) for j in jobs) == sum(j.request.n for j in jobs) == 14

    events = [json.loads(f["event"]) for _, f in raw_redis(settings).xrange(settings.event_stream)]
    job_events = [e for e in events if e["type"].startswith("genq.job.")]
    assert sorted(e["subject"] for e in job_events) == sorted(j.ref for j in jobs if j.status in TERMINAL)
    assert [e["type"] for e in events].count("genq.batch.finished") == 1

    counters = local_stack.simulator_counters()
    assert counters is not None
    assert counters["counters"]["creates"] == 12 and counters["duplicate_creates"] == 0
    assert all(s["max_running"] <= s["concurrency"] for s in counters["scopes"])


def fresh_machine(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a machine with nothing running and no genq settings: services on free loopback
    ports (started by genq itself), the fast simulator, state under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "DASHSCOPE_"))}
    env.update(
        GENQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        GENQ_STATE_DIR=str(tmp_path / "state"),
        GENQ_S3_ENDPOINT=f"127.0.0.1:{free_port(with_grpc_offset=True)}",
        GENQ_SIMULATOR_PROFILE="fast",
        **extra,
    )
    return env


def genq(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from producer.cli import main; main()", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def test_the_readme_batch_command_runs_twice_without_paying_twice(tmp_path: Path, chromium: str) -> None:
    """`genq batch examples/prompts.csv --local` (the README's first command, on a copy of the sample) on a
    machine with nothing running exits 0 with every valid row succeeded and every bad row reported by line,
    and leaves the images and a contact sheet beside the CSV whose path it prints and on which Chromium shows
    every image; the second run creates zero upstream tasks; export works."""
    env = fresh_machine(tmp_path, COLUMNS="200")
    sample = tmp_path / "examples" / "prompts.csv"
    sample.parent.mkdir()
    sample.write_bytes(SAMPLE.read_bytes())
    first = genq("batch", str(sample), "--local", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "12 new jobs (14 images) enqueued, 0 already known, 3 rejected" in first.stdout
    for line, reason in (
        ("15", "use '*' between width and height"),
        ("16", "unknown model 'dall-e-3'"),
        ("17", "must be 1-4"),
    ):
        assert any(
            row.split("│")[1].strip() == line and reason in row
            for row in first.stdout.splitlines()
            if row.count("│") >= 3
        ), (line, first.stdout)
    assert "succeeded      │   12" in first.stdout
    assert "12 upstream tasks created by this run, 0 duplicate creates" in first.stdout
    folder = tmp_path / "examples" / "prompts-results"
    assert f"Contact sheet: {folder / 'report.html'}" in first.stdout.replace("\n", "")
    assert len(list(folder.glob("*/*.png"))) == 14
    assert images_shown(chromium, folder / "report.html") == (14, 14)

    second = genq("batch", str(sample), "--local", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new jobs (0 images) enqueued, 12 already known" in second.stdout
    assert "not submitted again: 12 succeeded" in second.stdout
    assert "0 upstream tasks created by this run" in second.stdout

    exported = genq("export", "prompts", str(tmp_path / "out"), "--local", env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert len(list((tmp_path / "out").glob("*/*.png"))) == 14
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12

    status = genq("status", "prompts", "--json", "--local", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)["counts"] == {"succeeded": 12}


def test_markup_in_every_cell_is_printed_literally_by_batch_and_status(tmp_path: Path) -> None:
    """A CSV whose every cell is Rich markup (`[/oops]`, `[link=...]`) is enqueued, run and reported by
    `genq batch` and `genq status` with those strings printed as they are (no crash, no hyperlink escape),
    and both exit as usual."""
    # FORCE_COLOR: Rich writes as to a terminal, where live markup would emit OSC 8 hyperlinks.
    env = fresh_machine(tmp_path, COLUMNS="250", FORCE_COLOR="1")
    link = "[link=https://example.invalid]click[/link]"
    path = tmp_path / "markup.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "size", "model", "[bold]"])
        writer.writerow(["[/oops] a lighthouse", "", "", "[/oops]"])
        writer.writerow(["[red]a harbour", "[/oops]", "", link])
        writer.writerow([link, "", link, "[/]"])
    run = genq("batch", str(path), "--local", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "\x1b]" not in run.stdout  # no terminal hyperlink was injected (only Rich's own colours are there)
    shown = without_colours(run.stdout)
    assert "1 new jobs (1 images) enqueued, 0 already known, 2 rejected" in shown
    assert "got '[/oops]'" in shown and f"unknown model '{link}'" in shown
    status = genq("status", "markup", "--local", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "\x1b]" not in status.stdout
    assert "got '[/oops]'" in without_colours(status.stdout) and f"unknown model '{link}'" in without_colours(
        status.stdout
    )

    # A header whose column name carries a raw OSC 8 hyperlink: the file is refused, the name shown escaped.
    raw_link = "\x1b]8;;https://example.invalid/\x1b\\click me\x1b]8;;\x1b\\"
    header = tmp_path / "header.csv"
    header.write_text(f"title,{raw_link}\na cat,x\n", encoding="utf-8")
    refused = genq("batch", str(header), "--dry-run", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "no 'prompt' column" in refused.stderr
    assert "\x1b]" not in refused.stdout + refused.stderr
    assert "\\x1b]8;;https://example.invalid/" in without_colours(refused.stderr)


def without_colours(text: str) -> str:
    """The text a person reads: Rich's own colour codes (SGR sequences) taken out."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
