"""The submit -> poll -> finalize stages on real Redis, a real S3 server and the simulator over HTTP.

Celery is left out on purpose: these tests run the stage functions and follow the `Next` values they
return, so they check the job logic; `test_end_to_end.py` checks the same chain through real workers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from pydantic import SecretStr

from config.settings import Settings
from tests.conftest import RunningSimulator, raw_redis
from tests.stage_runner import enqueue, run
from workers.dashscope import DashScopeClient
from workers.job import Status
from workers.runtime import Runtime
from workers.submit import submit


def test_old_protocol_job_ends_with_every_image_and_manifest_stored(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """Two images of one task land in the bucket with their sha256 in metadata and manifest, and one event."""
    run(runtime, enqueue(runtime, {"id": "fox", "prompt": "a fox", "n": "2", "seed": "5"}))
    job = runtime.store.get("b/fox")
    assert job is not None and job.status is Status.SUCCEEDED
    assert [o["key"] for o in job.objects] == ["b/fox/0.png", "b/fox/1.png"]
    for obj in job.objects:
        data = runtime.results.client.get_object(runtime.settings.bucket, obj["key"]).read()
        assert data.startswith(b"\x89PNG") and hashlib.sha256(data).hexdigest() == obj["sha256"]
        assert runtime.results.sha256_of(obj["key"]) == obj["sha256"]
    manifest = runtime.results.get_json("b/fox/manifest.json")
    assert manifest is not None and manifest["task_id"] == job.task_id and manifest["seed"] == 5
    assert set(manifest["upstream"]) == {"submit_time", "scheduled_time", "end_time"}
    events = [json.loads(f["event"]) for _, f in raw_redis(runtime.settings).xrange(runtime.settings.event_stream)]
    assert [e["type"] for e in events] == ["genq.job.succeeded", "genq.batch.finished"]
    assert simulator.counters()["creates"] == 1


def test_new_protocol_and_video_go_through_the_same_chain(runtime: Runtime) -> None:
    """A wan2.6 image (choices[]) and a video (video_url, MP4) both end succeeded with their objects."""
    run(
        runtime,
        enqueue(
            runtime,
            {"id": "img", "prompt": "a poster", "model": "wan2.6-t2i", "size": "1024*1024"},
            {"id": "vid", "prompt": "waves", "model": "wan2.5-t2v-preview", "size": "1280*720"},
        ),
    )
    image, video = runtime.store.get("b/img"), runtime.store.get("b/vid")
    assert image is not None and image.status is Status.SUCCEEDED and image.objects[0]["key"] == "b/img/0.png"
    assert video is not None and video.status is Status.SUCCEEDED and video.objects[0]["key"] == "b/vid/0.mp4"
    assert video.objects[0]["content_type"] == "video/mp4"


def test_a_duplicated_message_submits_once(runtime: Runtime, simulator: RunningSimulator) -> None:
    """Delivering the same submit message twice creates one upstream task; the second finds the job moved on."""
    (step,) = enqueue(runtime, {"id": "dup", "prompt": "a cat"})
    follow = submit(runtime, step.ref, step.attempt)
    assert submit(runtime, step.ref, step.attempt) is None
    assert follow is not None
    run(runtime, [follow])
    job = runtime.store.get("b/dup")
    assert job is not None and job.status is Status.SUCCEEDED and job.submits == 1
    assert simulator.counters()["creates"] == 1


def test_result_host_off_the_allowlist_is_refused_and_nothing_fetched(
    runtime: Runtime, simulator: RunningSimulator
) -> None:
    """With the simulator's host not allowed, the job fails naming the host, and no download happens."""
    strict = replace(runtime, settings=runtime.settings.model_copy(update={"result_hosts": ("example.com",)}))
    run(strict, enqueue(strict, {"id": "x", "prompt": "a cat"}))
    job = strict.store.get("b/x")
    assert job is not None and job.status is Status.FAILED
    assert job.error_code == "ResultHostNotAllowed" and "127.0.0.1" in (job.error_message or "")
    assert simulator.counters().get("downloads", 0) == 0


def test_a_refused_key_fails_the_job_with_the_services_code(runtime: Runtime, settings: Settings) -> None:
    """An unknown API key ends the job failed with InvalidApiKey at once, and the key is in no record."""
    wrong = "sk-wrong-" + "z" * 20
    bad = replace(
        runtime,
        dashscope=DashScopeClient(runtime.downloads, base_url=settings.base_url, api_key=wrong),
        settings=settings.model_copy(update={"dashscope_api_key": SecretStr(wrong)}),
    )
    run(bad, enqueue(bad, {"id": "k", "prompt": "a cat"}))
    job = bad.store.get("b/k")
    assert job is not None and job.status is Status.FAILED and job.error_code == "InvalidApiKey"
    dump = json.dumps(raw_redis(bad.settings).hgetall("genq:job:b/k")) + json.dumps(
        raw_redis(bad.settings).xrange("genq:events")
    )
    assert wrong not in dump


def test_rows_are_validated_and_rerun_enqueues_nothing(runtime: Runtime, simulator: RunningSimulator) -> None:
    """Bad rows are recorded with line and reason; running the same rows again creates no job and no task."""
    rows = (
        {"prompt": "a cat"},
        {"prompt": "a dog", "size": "10x10"},
        {"prompt": "an owl", "id": "bad id!"},
        {"prompt": "an eel", "id": "e"},
        {"prompt": "an elk", "id": "e"},
    )
    run(runtime, enqueue(runtime, *rows))
    assert [(r["line"], r["field"]) for r in runtime.store.rejected("b")] == [(3, "size"), (4, "id"), (6, "id")]
    assert "first used on line 5" in runtime.store.rejected("b")[2]["reason"]
    creates = simulator.counters()["creates"]
    assert creates == 2
    assert enqueue(runtime, *rows) == []
    summary = runtime.store.batch_summary("b")
    assert summary is not None and summary.done and summary.total == 2 and summary.rejected == 3
    assert simulator.counters()["creates"] == creates
