"""The disruptions of a chaos run, on a thread of their own: SIGKILL a random worker every few seconds (and
start a new one), restart Redis once, stop the S3 server for a while, and black-hole the webhook receiver for a
while as `genq:events` is trimmed under it.

A kill takes either a whole worker node (the Celery main process and its pool, as a machine dying would) or
one pool process (its parent notices and forks another), in turn at random. The thread also plays the
process supervisor (compose's `restart: unless-stopped`): a worker that exits on its own is started again and
counted. Celery does exit when a pool process dies while the worker is still starting. Redis, S3 and the
webhook outage are triggered by the batch's progress, which the runner feeds in through `progress`, so every
disruption lands mid-batch whatever its size. Everything that happened is kept in `timeline` for the report.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import psutil
import redis

from ops.chaos import hooks
from ops.chaos.scenario import ChaosPlan
from ops.localstack import LocalStack
from ops.webhook_receiver import VerifyingReceiver

#: Appended to `genq:events` as the webhook outage ends: an entry that is not an event (no `event` field). The
#: webhook lane must dead-letter it as malformed and deliver on. Not during the outage, while the stream is trimmed
#: every second: on a loaded machine it could be trimmed before the collector reads it, and count as a gap.
MALFORMED_ENTRY = {"chaos": "an entry without an event field"}


@dataclass
class Disruptions:
    """How many of each disruption happened, and when (seconds since the run began)."""

    node_kills: int = 0
    pool_kills: int = 0
    worker_exits: int = 0  # workers that exited on their own and were restarted
    redis_restarts: int = 0
    s3_outages: int = 0
    s3_down_s: float = 0.0
    webhook_outages: int = 0
    events_trimmed: int = 0  # entries of `genq:events` removed by the trimming during the outage
    malformed_entries: int = 0  # entries appended to `genq:events` that are not events
    timeline: list[tuple[float, str]] = field(default_factory=list)


class Disruptor(threading.Thread):
    def __init__(self, stack: LocalStack, plan: ChaosPlan, started_at: float, receiver: VerifyingReceiver) -> None:
        super().__init__(name="chaos-disruptor", daemon=True)
        self.stack, self.plan, self.started_at, self.receiver = stack, plan, started_at, receiver
        self.redis = redis.Redis.from_url(stack.settings.redis_url, socket_timeout=5)
        self.rng = random.Random(plan.seed + 1)
        self.progress = 0.0  # share of the batch that is terminal, written by the runner
        self.done = Disruptions()
        self.error: BaseException | None = None
        self._stop_requested = threading.Event()
        self._next_worker = plan.workers + 1
        self._s3_back_at: float | None = None
        self._s3_stopped_at = 0.0
        self._hook_back_at: float | None = None
        self._next_trim = 0.0
        self._see_outage_out = True

    def stop(self, *, see_outage_out: bool = True) -> None:
        """Stop disrupting, bring S3 back if it is down, and wait for the thread. With `see_outage_out` (a batch
        that ended normally), a webhook outage still on is waited out (30 s at most) and the malformed entry
        appended as it ends; a run being abandoned does not wait."""
        self._see_outage_out = see_outage_out
        self._stop_requested.set()
        self.join()

    def run(self) -> None:
        next_kill = time.monotonic() + self._gap_s()
        try:
            while not self._stop_requested.wait(0.2):
                now = time.monotonic()
                if not self.done.redis_restarts and self.progress >= self.plan.redis_restart_at:
                    self._restart_redis()
                if not self.done.s3_outages and self.progress >= self.plan.s3_outage_at:
                    self._stop_s3()
                if self._s3_back_at is not None and now >= self._s3_back_at:
                    self._start_s3()
                if not self.done.webhook_outages and self.progress >= self.plan.webhook_outage_at:
                    self._black_hole_webhook()
                if self._hook_back_at is not None:
                    self._trim_events(now)
                self._restart_exited_workers()
                if now >= next_kill:
                    self._kill_a_worker()
                    next_kill = time.monotonic() + self._gap_s()
        except BaseException as exc:  # reported by the runner: a disruption that failed is a failed run
            self.error = exc
        finally:
            if self._s3_back_at is not None:
                with contextlib.suppress(Exception):
                    self._start_s3()
            if self._hook_back_at is not None and self.error is None and self._see_outage_out:
                # The batch ended inside the outage: see it out (30 s at most), so that the malformed entry is
                # still appended and the audit's event accounting covers the outage's end.
                time.sleep(max(0.0, self._hook_back_at - time.monotonic()))
                try:
                    self._trim_events(time.monotonic())
                except Exception as exc:  # reported by the runner like any other failed disruption
                    self.error = exc

    def _black_hole_webhook(self) -> None:
        self.receiver.black_hole_for(self.plan.webhook_outage_s)
        self._hook_back_at = time.monotonic() + self.plan.webhook_outage_s
        self.done.webhook_outages += 1
        self._note(
            f"webhook receiver black-holed for {self.plan.webhook_outage_s:.0f} s; genq:events trimmed to "
            f"{self.plan.events_trimmed_to} entries every second meanwhile"
        )

    def _trim_events(self, now: float) -> None:
        assert self._hook_back_at is not None
        if now >= self._hook_back_at:
            self._hook_back_at = None
            self.redis.xadd(self.stack.settings.event_stream, MALFORMED_ENTRY)  # type: ignore[arg-type]
            self.done.malformed_entries += 1
            self._note(
                f"webhook receiver answers again; {self.done.events_trimmed} events trimmed during the outage; "
                "one malformed entry appended"
            )
            return
        if now >= self._next_trim:
            self._next_trim = now + 1.0
            removed = self.redis.xtrim(
                self.stack.settings.event_stream, maxlen=self.plan.events_trimmed_to, approximate=False
            )
            self.done.events_trimmed += int(removed)

    def _gap_s(self) -> float:
        return self.plan.kill_every_s * self.rng.uniform(0.5, 1.5)

    def _note(self, what: str) -> None:
        self.done.timeline.append((round(time.monotonic() - self.started_at, 1), what))

    def _workers(self) -> list[str]:
        return [p.name for p in self.stack.started if p.name.startswith("worker-") and p.alive()]

    def _new_worker(self) -> str:
        name = f"chaos{self._next_worker}"
        self._next_worker += 1
        self.stack.start_worker(name)
        return f"worker-{name}"

    def _restart_exited_workers(self) -> None:
        for process in list(self.stack.started):
            if process.name.startswith("worker-") and not process.alive():
                code = process.popen.returncode
                process.stop()
                self.stack.started.remove(process)
                self.done.worker_exits += 1
                self._note(f"{process.name} exited by itself (code {code}); started {self._new_worker()}")

    def _kill_a_worker(self) -> None:
        names = self._workers()
        if not names:
            return
        name = self.rng.choice(names)
        pool = _pool_processes(self.stack.process(name).pid)
        if pool and self.rng.random() < 0.5:
            victim = self.rng.choice(pool)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            self.done.pool_kills += 1
            self._note(f"SIGKILL pool process {victim} of {name}")
            return
        hooks.kill(self.stack, name)
        self.done.node_kills += 1
        self._note(f"SIGKILL {name} (main process and pool); started {self._new_worker()}")

    def _restart_redis(self) -> None:
        self._note(f"Redis stopped (AOF on), back in {self.plan.redis_down_s:.0f} s")
        hooks.restart_redis(self.stack, down_s=self.plan.redis_down_s)
        self.done.redis_restarts += 1
        self._note("Redis restarted")

    def _stop_s3(self) -> None:
        hooks.stop_s3(self.stack)
        self._s3_stopped_at = time.monotonic()  # down from here, for at least the plan's outage
        self._s3_back_at = self._s3_stopped_at + self.plan.s3_outage_s
        self.done.s3_outages += 1
        self._note(f"S3 server stopped for {self.plan.s3_outage_s:.0f} s")

    def _start_s3(self) -> None:
        self._s3_back_at = None
        hooks.start_s3(self.stack)
        self.done.s3_down_s = round(time.monotonic() - self._s3_stopped_at, 1)
        self._note("S3 server started again")


def _pool_processes(main_pid: int) -> list[int]:
    """The pool processes a Celery prefork worker forked (its direct children)."""
    try:
        return [child.pid for child in psutil.Process(main_pid).children()]
    except psutil.Error:
        return []
