"""One chaos run: start a local stack of its own (Redis with AOF, S3, the `hostile` simulator, beat, workers),
and a webhook receiver that verifies every delivery; send the batch as `genq batch` does, disrupt everything
while it runs, wait until every job ended and every event was delivered or dead-lettered, then audit from the
outside (`audit.py`).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from config.celery_app import create_app
from config.settings import Settings
from ops.chaos.audit import Audit, audit_run, held_slots
from ops.chaos.disruptions import Disruptions, Disruptor
from ops.chaos.scenario import ChaosPlan, chaos_rows, write_csv
from ops.localstack import LocalStack, isolated_settings
from ops.webhook_receiver import VerifyingReceiver
from producer.batch import enqueue_rows
from producer.csv_source import read_rows
from workers.bucket import ResultBucket, make_minio
from workers.jobstore import JobStore
from workers.jobstore.webhook_outbox import Outbox
from workers.messages import publish
from workers.runtime import make_outbox, make_quota, make_store

BATCH_ID = "chaos"


@dataclass
class ChaosResult:
    plan: ChaosPlan
    audit: Audit
    disruptions: Disruptions
    batch_s: float  # from the first job sent to the last job terminal (or the timeout)
    state_dir: Path


def run_chaos(plan: ChaosPlan, state_dir: Path, say: Callable[[str], None] = print) -> ChaosResult:
    """Run `plan` with every service's data and logs under `state_dir`; `say` gets a progress line every 10 s."""
    rows = chaos_rows(plan)
    csv_path = write_csv(state_dir / "chaos.csv", rows)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()  # the specification's form
    with VerifyingReceiver({"standardwebhooks": Webhook(secret)}) as receiver:
        return _run(plan, state_dir, rows, csv_path, receiver, secret, say)


def _run(
    plan: ChaosPlan,
    state_dir: Path,
    rows: list[dict[str, str]],
    csv_path: Path,
    receiver: VerifyingReceiver,
    secret: str,
    say: Callable[[str], None],
) -> ChaosResult:
    configured = isolated_settings(
        state_dir / "stack",
        dashscope_api_key=None,  # always the simulator, even where a real key is in the environment
        accounts=(),
        simulator_profile="hostile",
        worker_concurrency=plan.worker_concurrency,
        finalize_retry_cap_s=plan.finalize_retry_cap_s,
        unknown_confirm_s=10.0,  # the hostile profile's forgotten tasks are confirmed UNKNOWN within the run
        image_deadline_s=plan.image_deadline_s,
        video_deadline_s=plan.video_deadline_s,
        overdue_poll_s=plan.overdue_poll_s,
        webhook_url=receiver.url,
        webhook_secret=SecretStr(secret),
        webhook_timeout_s=2.0,  # a black-holed try costs 2 s of the webhook worker's time, not 15
        webhook_retry_first_s=1.0,
        webhook_retry_cap_s=8.0,  # deliveries resume within seconds of the outage's end
        webhook_outbox_max=plan.webhook_outbox_max,
    )
    with LocalStack(configured, workers=plan.workers, simulator_seed=plan.seed) as stack:
        settings, simulator_url = stack.settings, stack.simulator_url
        assert simulator_url is not None  # the settings above leave no way to a real account
        say(f"stack up: logs in {stack.log_dir}; sending {plan.jobs} jobs from {csv_path}")
        ResultBucket(make_minio(settings), settings.bucket).ensure_bucket()
        store, celery = make_store(settings), create_app(settings)
        started = time.monotonic()
        report = enqueue_rows(
            store,
            settings,
            BATCH_ID,
            read_rows(csv_path),
            source=str(csv_path),
            send=lambda s: publish(celery, s),
            quota=make_quota(settings),
        )
        say(f"{report.accepted} jobs accepted ({report.images} images), {len(report.rejected)} rows rejected")
        disruptor = Disruptor(stack, plan, started, receiver)
        disruptor.start()
        try:
            batch_s = _wait_for_batch(store, plan, disruptor, started, say)
        except BaseException:
            disruptor.stop(see_outage_out=False)
            raise
        disruptor.stop()
        if disruptor.error is not None:
            raise RuntimeError(f"a disruption failed: {disruptor.error!r}") from disruptor.error
        _settle(settings, plan.settle_s)
        _drain_webhooks(make_outbox(settings), plan.settle_s)
        say("auditing from the outside: simulator, job store, bucket, event stream, webhook receiver")
        audit = audit_run(settings, simulator_url, BATCH_ID, rows, receiver)
        # Every process the disruptions did not kill must have lived through them (beat through the Redis
        # restart, workers through both outages). Workers that exited were restarted, and are counted.
        audit.add("workers that exited on their own (restarted)", disruptor.done.worker_exits)
        died = [p.name for p in stack.started if not p.alive()]
        audit.add("services still down at the end (Redis, S3, simulator, beat, workers)", len(died), 0)
        audit.problems += [f"died by itself: {name} (see its log)" for name in died]
        celery.close()
    return ChaosResult(plan, audit, disruptor.done, batch_s, state_dir)


def _wait_for_batch(
    store: JobStore, plan: ChaosPlan, disruptor: Disruptor, started: float, say: Callable[[str], None]
) -> float:
    """Until every job is terminal or the plan's timeout; feeds the disruptor the batch's progress."""
    last_said = 0.0
    while (elapsed := time.monotonic() - started) < plan.timeout_s:
        try:
            summary = store.batch_summary(BATCH_ID)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.5)  # Redis is restarting: that is one of the disruptions
            continue
        if summary is not None:
            disruptor.progress = summary.terminal / max(1, summary.total)
            if summary.done:
                say(f"{elapsed:6.0f} s  all {summary.total} jobs terminal")
                return elapsed
            if elapsed - last_said >= 10:
                last_said = elapsed
                done = disruptor.done
                say(
                    f"{elapsed:6.0f} s  {summary.terminal}/{summary.total} terminal; kills: "
                    f"{done.node_kills} workers, {done.pool_kills} pool processes; Redis restarts: "
                    f"{done.redis_restarts}; S3 outages: {done.s3_outages}"
                )
        time.sleep(0.5)
    say(f"timed out after {plan.timeout_s:.0f} s: the jobs not terminal count as lost")
    return plan.timeout_s


def _drain_webhooks(outbox: Outbox, settle_s: float) -> None:
    """Give the webhook lane up to `settle_s` to deliver (or dead-letter) what the outage held back: until the
    outbox is empty and its collector has read every entry of `genq:events`."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if not outbox.backlog():
            return
        time.sleep(1)


def _settle(settings: Settings, settle_s: float) -> None:
    """Give the sweep (every 5 s) up to `settle_s` to hand back slots whose holder died after its job ended."""
    deadline = time.monotonic() + settle_s
    quota = make_quota(settings)
    while time.monotonic() < deadline and held_slots(settings, quota):
        time.sleep(1)
