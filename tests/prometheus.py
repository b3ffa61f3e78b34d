"""A real Prometheus for the tests (the Debian package's binary), and Prometheus's own arithmetic on histograms.

`Prometheus.start` runs one on 127.0.0.1 and a free port, scraping the given targets, its storage and log in a
folder of the test's; `query` evaluates PromQL through the HTTP API. `histogram_quantile` computes what PromQL's
function of that name gives for cumulative buckets, so that a test can say what a panel should show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops.localstack.process import ManagedProcess, free_port

#: One series of an instant vector: its labels and value.
Sample = tuple[dict[str, str], float]


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess  # stopped by whoever started it

    @classmethod
    def start(cls, binary: str, targets: list[str], folder: Path, *, scrape_interval_s: int) -> Prometheus:
        """Scrape `targets` (`host:port`, path `/metrics`) every `scrape_interval_s`, as job `genq-worker`."""
        interval = f"{scrape_interval_s}s"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [{"job_name": "genq-worker", "static_configs": [{"targets": targets}]}],
        }
        path = folder / "prometheus.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        port = free_port()
        argv = [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={folder / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        process = ManagedProcess("prometheus", argv, log_path=folder / "prometheus.log")
        prometheus = cls(f"http://127.0.0.1:{port}", process)
        process.wait_until(prometheus.ready, timeout_s=30, what="ready")
        return prometheus

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def evaluate(self, expr: str, *, at: float | None = None) -> tuple[float, list[Sample]]:
        """The instant vector `expr` evaluates to, now or at `at`: the evaluation time, and each series."""
        params = {"query": expr} | ({"time": repr(at)} if at is not None else {})
        answer = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["resultType"] == "vector", (expr, answer["data"]["resultType"])
        result = answer["data"]["result"]
        when = float(result[0]["value"][0]) if result else math.nan
        return when, [(item["metric"], float(item["value"][1])) for item in result]

    def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        return self.evaluate(expr, at=at)[1]

    def value(self, expr: str) -> float:
        """The value of an expression that evaluates to one series."""
        [(_, value)] = self.query(expr)
        return value


def cumulative(values: list[float], bounds: tuple[float, ...]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) per bucket, +Inf last, as a Prometheus histogram holds `values`."""
    return [(bound, float(sum(1 for v in values if v <= bound))) for bound in bounds]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's `histogram_quantile` over cumulative buckets (linear within a bucket, the highest finite bound
    for the +Inf one); NaN without observations."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    index = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (buckets[index - 1][0], buckets[index - 1][1]) if index else (0.0, 0.0)
    end, count = buckets[index]
    return start + (end - start) * (rank - below) / (count - below)


def bucket_width(value: float, bounds: tuple[float, ...]) -> float:
    """The width of the bucket `value` falls in."""
    index = next(i for i, bound in enumerate(bounds) if value <= bound)
    return bounds[index] - (bounds[index - 1] if index else 0.0)
