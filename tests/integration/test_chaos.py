"""The chaos suite's reduced form (`ops/chaos/`): about 200 jobs under every disruption of the full run, audited
from the outside. The full run's table is in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.chaos.run import run_chaos
from ops.chaos.scenario import ChaosPlan

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)  # about 2.5 minutes here; the plan itself gives up waiting after 10
def test_reduced_chaos_run_loses_nothing_and_creates_nothing_twice(tmp_path: Path) -> None:
    """200 mixed jobs against the hostile simulator (its faults firing on creates, queries, tasks and downloads),
    while a worker or pool process is SIGKILLed every few seconds, Redis restarts once, S3 is down for 30 s and
    the webhook receiver black-holes connections for 30 s as the event stream is trimmed to 10 entries: every
    job ends, with a code and message when it did not succeed; no task is created upstream twice, none is left
    running, no billed image is lost; every reported image is in the bucket with the sha256 of the bytes the
    service served; no slot stays held; every terminal job emitted exactly one event; and every event was
    delivered (verified by `standardwebhooks`) or dead-lettered with its reason."""
    plan = ChaosPlan.reduced()
    lines: list[str] = []
    result = run_chaos(plan, tmp_path / "c", say=lines.append)  # short: SeaweedFS's sockets live under it

    failed = [check for check in result.audit.checks if not check.ok]
    assert not failed, f"{failed}\nproblems: {result.audit.problems[:20]}\nprogress: {lines[-5:]}"
    figures, done = result.audit.figures, result.disruptions
    assert figures["jobs accepted"] == plan.jobs
    assert figures["objects with sha256 = reported = served upstream"] > plan.jobs  # n = 1..4 images per job
    # The disruptions really happened, mid-batch.
    assert done.node_kills + done.pool_kills >= 5
    assert done.redis_restarts == 1
    assert done.s3_outages == 1 and done.s3_down_s >= plan.s3_outage_s
    assert figures["jobs whose results waited for S3 (finalize retried)"] > 0, "the S3 outage tested nothing"
    assert done.webhook_outages == 1 and done.events_trimmed > 0 and done.malformed_entries == 1
    assert figures["dead letters: malformed: no event field"] == 1, "the malformed entry was not dead-lettered"
    assert figures["events delivered to the webhook (verified by standardwebhooks)"] > plan.jobs // 2
    # The service really was hostile, as the simulator counted it: each family of the profile's faults fired.
    families = {
        "create": ("create_500", "create_503", "create_drop_after", "create_malformed", "create_slow", "burst"),
        "query": ("query_500", "query_503", "query_drop", "query_malformed", "query_slow"),
        "task": ("task_failed", "task_timeout", "task_inspection", "task_partial", "task_expire"),
        "download": ("url_fail_once",),
    }
    injected = result.audit.injected
    silent = [family for family, faults in families.items() if not any(injected[f] for f in faults)]
    assert not silent, f"no {silent} fault fired: {dict(injected)}"
    # The paths issue 14 added, each made sure of by trigger words in the reduced plan, really were walked.
    triggered = ("task_long", "create_hang", "url_unparseable", "task_unknown_flap")
    assert all(injected[fault] for fault in triggered), f"a triggered fault did not fire: {dict(injected)}"
    assert figures["jobs overdue (their deadline passed while the task ran upstream)"] > 0, "no deadline race"
    assert figures["billed images refused on purpose (malformed or disallowed URL)"] > 0
