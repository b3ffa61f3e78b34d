"""The ETA of a batch from the quota and the generation times seen so far, and `genq watch` on a batch."""

from __future__ import annotations

from typer.testing import CliRunner

from producer.cli import app
from producer.cli.eta import estimate
from tests.conftest import SIM_KEY
from tests.stage_runner import enqueue, run
from workers.runtime import Runtime


def test_eta_is_remaining_jobs_times_generation_time_over_the_slots(runtime: Runtime) -> None:
    """No estimate before any task ran; once some did, remaining x mean generation time / 5 tasks at once."""
    rows = [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(20)]
    steps = enqueue(runtime, *rows)
    assert estimate(runtime.store, runtime.settings, "b", 20) is None
    run(
        runtime,
        steps,
        timeout_s=60,
        until=lambda: (s := runtime.store.batch_summary("b")) is not None and s.terminal >= 6,
    )
    found = estimate(runtime.store, runtime.settings, "b", 14)
    assert found is not None and found.slots == 5
    assert 0.3 <= found.mean_generation_s <= 1.2  # the fast profile: 0.3-1.0 s, plus 0.1 s of prompt extension
    assert found.seconds == 14 * found.mean_generation_s / 5
    assert found.describe().startswith("ETA ~0m")


def test_watch_shows_a_finished_batch_and_exits_0(runtime: Runtime) -> None:
    """`genq watch` on a batch that is done prints its counters and exits 0; an unknown batch exits 2."""
    run(runtime, enqueue(runtime, {"id": "a", "prompt": "a cat"}, batch_id="w"), timeout_s=30)
    s = runtime.settings
    env = {
        "DASHSCOPE_API_KEY": SIM_KEY,
        "GENQ_DASHSCOPE_BASE_URL": s.base_url,
        "GENQ_REDIS_URL": s.redis_url,
        "GENQ_S3_ENDPOINT": s.s3_endpoint,
        "GENQ_S3_ACCESS_KEY": s.s3_access_key.get_secret_value() if s.s3_access_key else "",
        "GENQ_S3_SECRET_KEY": s.s3_secret_key.get_secret_value() if s.s3_secret_key else "",
    }
    done = CliRunner().invoke(app, ["watch", "w"], env=env, terminal_width=160)
    assert done.exit_code == 0, done.output
    assert "succeeded" in done.output
    missing = CliRunner().invoke(app, ["watch", "nope"], env=env, terminal_width=160)
    assert missing.exit_code == 2 and "no batch 'nope'" in " ".join(missing.output.split())
