"""Benchmark: a webhook receiver that black-holes connections must not slow a batch down.

    python -m ops.bench_webhook                 # 100 jobs per batch, 2 rounds, with the no-lane control
    python -m ops.bench_webhook --jobs 50 --rounds 1 --no-control

Starts genq's local stack (Redis, S3 server, simulator with the `fast` profile, beat, one stage worker of 4
processes and the webhook worker), and two receivers on 127.0.0.1: one answers 204 at once, the other accepts
connections and never answers (every try waits out `GENQ_WEBHOOK_TIMEOUT_S`). Batches of `--jobs` jobs run one
after the other, alternating the receiver (`genq batch --webhook URL` per batch), each timed from the first
enqueue to its last job's end; between batches the webhook outbox is emptied, so each batch starts alike.

Printed: each batch's makespan, the mean per receiver, and the ratio black-hole / at-once (target: at most
1.10). With the control (default), the same batches run again with webhook delivery on the stage worker
(one worker on the stages' queues and `webhooks`, as before webhook delivery had its own lane), showing what
the lane prevents.
"""

from __future__ import annotations

import argparse
import base64
import logging
import secrets
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pydantic import SecretStr

from config.celery_app import create_app
from config.logging import configure_logging
from config.settings import Settings
from ops.chaos import hooks
from ops.localstack import LocalStack, isolated_settings, services
from ops.localstack.process import free_port
from ops.localstack.stack import child_env
from producer.batch import enqueue_rows
from producer.csv_source import CsvRow
from workers.jobstore import JobStore
from workers.messages import publish
from workers.runtime import make_outbox, make_quota, make_store

TARGET_RATIO = 1.10


class AtOnce:
    """Answers every POST with 204 as soon as the body is read; counts them."""

    def __init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.received = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


class BlackHole:
    """Accepts connections and never reads or answers: every request waits for its timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", free_port()), backlog=1024)
        self.held: list[socket.socket] = []
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.closing = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def run_batch(stack: LocalStack, store: JobStore, batch_id: str, jobs: int, webhook: str) -> float:
    """Enqueue `jobs` jobs with their own webhook, as `genq batch --webhook` does; seconds until the batch is
    done."""
    celery = create_app(stack.settings)
    rows = [CsvRow(i + 2, {"id": f"j{i}", "prompt": f"{batch_id}: a harbour at dawn, take {i}"}) for i in range(jobs)]
    started = time.monotonic()
    store.set_batch_webhook(batch_id, webhook)
    enqueue_rows(
        store,
        stack.settings,
        batch_id,
        rows,
        source="bench",
        send=lambda step: publish(celery, step),
        quota=make_quota(stack.settings),
    )
    while not ((summary := store.batch_summary(batch_id)) is not None and summary.done):
        time.sleep(0.05)
        if time.monotonic() - started > 900:
            raise RuntimeError(f"batch {batch_id} did not finish within 900 s")
    elapsed = time.monotonic() - started
    celery.close()
    return elapsed


def empty_outbox(settings: Settings) -> None:
    """Forget events still waiting for delivery, so the next batch starts with the same (empty) outbox."""
    make_outbox(settings).forget_waiting()


def measure(
    stack: LocalStack, store: JobStore, label: str, jobs: int, rounds: int, at_once: AtOnce, hole: BlackHole
) -> dict[str, list[float]]:
    run_batch(stack, store, f"{label}-warmup", 5, at_once.url)
    times: dict[str, list[float]] = {"at once": [], "black hole": []}
    for round_no in range(rounds):
        for name, url in (("at once", at_once.url), ("black hole", hole.url)):
            empty_outbox(stack.settings)
            seconds = run_batch(stack, store, f"{label}-{name.replace(' ', '')}-{round_no}", jobs, url)
            times[name].append(seconds)
            print(f"  {label:8} round {round_no + 1}  receiver {name:10}  {seconds:6.1f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_webhook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    at_once, hole = AtOnce(), BlackHole()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="genq-bench-webhook-") as state:
        settings = isolated_settings(
            Path(state), simulator_profile="fast", webhook_secret=SecretStr(secret), worker_concurrency=4
        )
        with LocalStack(settings, workers=1) as stack:
            store = make_store(stack.settings)
            print(f"{args.jobs} jobs per batch, simulator profile fast, 1 stage worker x 4 processes")
            results["lane"] = measure(stack, store, "lane", args.jobs, args.rounds, at_once, hole)
            if args.control:
                hooks.kill(stack, "webhook-worker")
                hooks.kill(stack, "worker-local1")
                stack.started.append(
                    services.start_worker(
                        stack.log_dir,
                        concurrency=4,
                        env=child_env(stack.settings),
                        name="combined",
                        queues=f"{services.STAGE_QUEUES},{services.WEBHOOK_QUEUES}",
                    )
                )
                results["no lane"] = measure(stack, store, "no-lane", args.jobs, args.rounds, at_once, hole)
    at_once.close()
    hole.close()
    print("\n| webhook delivery | receiver at once (s) | receiver black-holed (s) | ratio |\n|---|---|---|---|")
    ratios = {}
    for label, times in results.items():
        fast, slow = statistics.mean(times["at once"]), statistics.mean(times["black hole"])
        ratios[label] = slow / fast
        print(f"| {label} | {fast:.1f} | {slow:.1f} | {ratios[label]:.3f} |")
    print(f"deliveries the at-once receiver answered: {at_once.received}; black-holed connections: {len(hole.held)}")
    met = ratios["lane"] <= TARGET_RATIO
    print(f"target (lane ratio <= {TARGET_RATIO:.2f}): {'met' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
