"""Metrics: with the local stack running a batch, every metric genq defines is served with non-zero values
where the batch produced them, and the Grafana dashboard references only metrics that exist."""

from __future__ import annotations

import functools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.localstack import LocalStack
from producer.cli.display import billed_words
from producer.cli.report import render
from producer.csv_source import CsvRow
from tests.conftest import raw_redis
from tests.stage_runner import publish_rows
from workers.billing import utc_day
from workers.bucket import ResultBucket, make_minio

pytestmark = pytest.mark.integration
DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "genq-dashboard.json"


def scrape(urls: list[str], *, all_up: bool = True) -> dict[str, float]:
    """Sample name (with labels folded away) -> value summed over every worker's endpoint. With `all_up` false,
    a worker whose endpoint does not answer yet is left out."""
    totals: dict[str, float] = defaultdict(float)
    for url in urls:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.TransportError:  # refused, reset or slow while the worker is still starting
            if all_up:
                raise
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("genq_"):
                    totals[sample.name] += sample.value
    return totals


def test_a_batch_lights_up_every_metric_and_its_bill_is_the_same_everywhere(
    local_stack_factory: Callable[..., LocalStack],
) -> None:
    """Throttled creates and queries, a failed download, a partly failed task and normal jobs make every metric
    non-zero (results at risk stays at zero, and is served), and the billed units the two workers counted, the
    batch's and the day's billed totals (what `genq status` and `genq billed` show), the contact sheet's header
    and the job and batch events all equal the simulator's own count of billed images."""
    stack = local_stack_factory(workers=2, metrics=True, simulator_profile="demo")
    prompts = ["a sim:burst:once", "b sim:query_429:once", "c sim:url_fail_once", "d", "e", "f", "g"]
    fields = [{"id": f"j{i}", "prompt": p} for i, p in enumerate(prompts)]
    fields.append({"id": "partial", "prompt": "h sim:task_partial", "n": "3"})  # 3 asked for, fewer billed
    store, _ = publish_rows(stack, "b", [CsvRow(i + 2, f) for i, f in enumerate(fields)])
    busy: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while not (summary := store.batch_summary("b")) or not summary.done:
        assert time.monotonic() < deadline, summary
        sample = scrape(stack.metrics_urls, all_up=False)
        if sample.get("genq_slot_utilisation", 0) > 0:
            busy = sample
        time.sleep(0.5)
    done = scrape(stack.metrics_urls)
    throttled_endpoints = {
        sample.labels["endpoint"]
        for url in stack.metrics_urls
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text)
        for sample in family.samples
        if sample.name == "genq_throttled_total" and sample.value > 0
    }

    assert busy, "slot utilisation was never above zero while the batch ran"
    assert busy["genq_upstream_tasks"] > 0
    for name in (
        "genq_job_status_total",
        "genq_upstream_queue_seconds_count",
        "genq_upstream_run_seconds_count",
        "genq_detection_lag_seconds_count",
        "genq_polls_per_job_count",
        "genq_download_bytes_total",
        "genq_download_seconds_count",
        "genq_finalize_failures_total",
        "genq_jobs",
    ):
        assert done.get(name, 0) > 0, name
    assert throttled_endpoints == {"create", "query"}
    upstream = stack.simulator_counters()
    assert upstream is not None
    assert upstream["faults_fired"] == {"burst": 1, "query_429": 1, "url_fail_once": 1, "task_partial": 1}
    assert "genq_results_at_risk_total" in done
    assert done["genq_billed_units_total"] == upstream["billed_images"]
    assert len(prompts) < upstream["billed_images"] < len(prompts) + 3  # the partial task: only its successes

    billed, model = float(upstream["billed_images"]), stack.settings.default_model
    summary = store.batch_summary("b")
    assert summary is not None and summary.billed == {model: billed}
    days = {utc_day(time.time() - back) for back in (0, 300)}  # the run may straddle midnight (UTC)
    assert sum(units for d in days for units in store.billed(d).values()) == billed
    events = [json.loads(f["event"]) for _, f in raw_redis(stack.settings).xrange(stack.settings.event_stream)]
    ends = [e["data"] for e in events if e["type"].startswith("genq.job.") and e["subject"].startswith("b/")]
    assert len(ends) == len(fields) and sum(data["billed_units"] for data in ends) == billed
    (finished,) = [e["data"] for e in events if e["type"] == "genq.batch.finished" and e["subject"] == "b"]
    assert finished["billed"] == {model: billed}
    words = functools.partial(billed_words, settings=stack.settings)
    page, _ = render(store, ResultBucket(make_minio(stack.settings), stack.settings.bucket), "b", billed_text=words)
    assert f'<span id="billed">{billed:g} images of {model} (no price)</span>' in page

    referenced = set(re.findall(r"genq_[a-z_]+", json.dumps(json.loads(DASHBOARD.read_text())["panels"])))
    served = set(done) | {re.sub(r"_(bucket|sum|count)$", "", n) for n in done}
    assert referenced and referenced <= served, referenced - served
