"""Benchmark: stream a large CSV into accepted jobs, as `genq batch` does, and print rows per second and peak
resident memory.

    python -m ops.bench_enqueue               # 100,000 rows
    python -m ops.bench_enqueue --rows 20000

Starts a Redis (Valkey) on a free port, writes a CSV of varied rows (models, sizes, n, seeds, extra metadata
columns, one bad row in a thousand), then runs both passes of `genq batch` (check every row, then create the
jobs in their wait queues and admit what the free slots allow) in a child process, whose peak RSS is read
from the kernel (`ru_maxrss`). Targets: 5,000 rows/s or more, peak under 200 MB.
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config.logging import configure_logging

MODELS = ("wan2.5-t2i-preview", "wan2.6-t2i", "wan2.2-t2i-flash")


def write_csv(path: Path, rows: int) -> int:
    """The input file; returns how many rows are bad on purpose."""
    bad = 0
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "model", "size", "n", "seed", "campaign", "owner"])
        for i in range(rows):
            model = MODELS[i % len(MODELS)]
            size = "1024*1024" if model == "wan2.2-t2i-flash" else "1280*1280"
            n = str(1 + i % 4)
            if i % 1000 == 999:
                n, bad = "9", bad + 1
            writer.writerow(
                [f"row{i}", f"prompt {i}: a harbour at dawn, style {i % 37}", model, size, n, i, "c1", "ops"]
            )
    return bad


def child(csv_path: Path, redis_url: str) -> None:
    """Both passes of `genq batch`, timed, in this process."""
    from config.celery_app import create_app
    from config.settings import Settings
    from producer.batch import check_rows, enqueue_rows
    from producer.csv_source import read_rows
    from workers.messages import publish
    from workers.runtime import make_quota, make_store

    settings = Settings(redis_url=redis_url, dashscope_api_key="bench-key-0000")
    store, celery = make_store(settings), create_app(settings)
    began = time.perf_counter()
    checked = check_rows(settings, read_rows(csv_path))
    checked_s = time.perf_counter() - began
    report = enqueue_rows(
        store,
        settings,
        "big",
        read_rows(csv_path),
        source=str(csv_path),
        send=lambda s: publish(celery, s),
        quota=make_quota(settings),
    )
    total_s = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = report.rows
    print(
        f"rows={rows} accepted={report.accepted} rejected={len(report.rejected)} valid_checked={checked.valid} "
        f"check_s={checked_s:.2f} total_s={total_s:.2f} rows_per_s={rows / total_s:.0f} peak_rss_mb={peak_mb:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_enqueue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--child", nargs=2, metavar=("CSV", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # stdout is the benchmark's table
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return 0
    from ops.localstack import services
    from ops.localstack.process import free_port

    with tempfile.TemporaryDirectory(prefix="genq-bench-enqueue-") as tmp:
        root = Path(tmp)
        csv_path = root / "big.csv"
        bad = write_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 2**20
        port = free_port()
        redis_process = services.start_redis(root / "redis", port, root / "logs")
        try:
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "ops.bench_enqueue",
                        "--child",
                        str(csv_path),
                        f"redis://127.0.0.1:{port}/0",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
        finally:
            redis_process.stop()
    figures = dict(item.split("=") for item in out.split())
    print(f"{args.rows:,} rows ({size_mb:.1f} MB, {bad} bad on purpose) -> accepted jobs")
    print("| rows | accepted | rejected | seconds | rows/s | peak RSS (MB) |\n|---|---|---|---|---|---|")
    print(
        f"| {int(figures['rows']):,} | {int(figures['accepted']):,} | {figures['rejected']} | {figures['total_s']} "
        f"| {int(figures['rows_per_s']):,} | {figures['peak_rss_mb']} |"
    )
    ok = int(figures["rows_per_s"]) >= 5000 and float(figures["peak_rss_mb"]) < 200
    print("targets (>= 5,000 rows/s, < 200 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
