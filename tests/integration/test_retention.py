"""Retention on the real services: a batch runs end to end against the simulator (real Redis, real S3 server,
the stages in-process), then the purge, with its clock moved past the retention, takes the finished jobs out of
Redis while their results and manifests stay in the bucket, and leaves running and waiting jobs alone. What is
left in Redis is read with a client of the test's own, as an operator would."""

from __future__ import annotations

import time

from tests.conftest import raw_redis
from tests.stage_runner import enqueue, run
from workers.job import Status, record_of
from workers.jobstore import NewJob
from workers.requests import GenerationRequest
from workers.retention import purge_finished
from workers.runtime import Runtime


def test_finished_jobs_leave_redis_after_the_retention_and_their_manifests_stay(runtime: Runtime) -> None:
    """Three jobs of a batch end succeeded (a fourth row was rejected); a purge whose cut-off is before they ended
    removes nothing; one past it removes the three jobs, their task owners and the batch with its rejected row from
    Redis, while every object and manifest is still in the bucket, and a job whose task runs upstream and one
    waiting for a slot are untouched, record for record."""
    rt, redis = runtime, raw_redis(runtime.settings)
    rows = [{"id": f"j{i}", "prompt": f"a lighthouse, take {i}"} for i in range(3)]
    before = time.time()  # every job of the batch ends after this
    run(rt, enqueue(rt, *rows, {"id": "bad", "prompt": "a lighthouse", "n": "9"}, batch_id="done"), timeout_s=60)
    assert [r["line"] for r in rt.store.rejected("done")] == [5]
    finished = [job for job in rt.store.jobs("done")]
    assert [job.status for job in finished] == [Status.SUCCEEDED] * 3
    stored = [obj["key"] for job in finished for obj in job.objects] + [f"{job.ref}/manifest.json" for job in finished]

    left = run(
        rt,
        enqueue(rt, {"id": "busy", "prompt": "a slow harbour"}, batch_id="live"),
        until=lambda: (job := rt.store.get("live/busy")) is not None and job.status is Status.SUBMITTED,
    )
    assert left, "the live job should still have a poll to come"
    waiting = NewJob("live/waits", 9, rt.settings.default_model, record_of("live/waits", 9, _request(rt), time.time()))
    assert rt.store.create_jobs([waiting]) == [None]
    live = {ref: redis.hgetall(f"genq:job:{ref}") for ref in ("live/busy", "live/waits")}
    assert {record["status"] for record in live.values()} == {"submitted", "accepted"}

    retention = rt.settings.retention_s
    early = purge_finished(rt.store, retention, now=before + retention - 1)  # a cut-off before every end
    assert (early.jobs, early.batches) == (0, 0)
    report = purge_finished(rt.store, retention, now=time.time() + retention + 60)
    assert (report.jobs, report.batches, report.complete) == (3, 1, True)

    assert redis.keys("genq:job:done/*") == [] and redis.keys("genq:batch:done*") == []
    assert all(redis.get(f"genq:task:{job.task_id}") is None for job in finished)
    assert "done" not in redis.zrange("genq:batches", 0, -1)
    assert redis.zrange("genq:finished", 0, -1) == [] and redis.zrange("genq:batches:done", 0, -1) == []
    for key in stored:
        assert rt.results.client.stat_object(rt.settings.bucket, key).size, key
    manifest = rt.results.get_json("done/j0/manifest.json")
    assert manifest is not None and manifest["task_id"] == finished[0].task_id

    assert {ref: redis.hgetall(f"genq:job:{ref}") for ref in live} == live
    assert rt.store.waiting([rt.settings.default_model]) == {rt.settings.default_model: 1}
    run(rt, left, timeout_s=60)  # the running job still ends as it would have
    busy = rt.store.get("live/busy")
    assert busy is not None and busy.status is Status.SUCCEEDED


def _request(rt: Runtime) -> GenerationRequest:
    return GenerationRequest(model=rt.settings.default_model, prompt="a quiet pier")
