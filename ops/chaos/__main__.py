"""`python -m ops.chaos`: the chaos run of `docs/reliability.md`. Exits 0 when every check of the audit holds.

python3 bootstrap.py python -m ops.chaos                  # 1,000 jobs, the full run
python3 bootstrap.py python -m ops.chaos --jobs 200       # the reduced form the test suite runs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from config.logging import configure_logging
from ops.chaos.run import ChaosResult, run_chaos
from ops.chaos.scenario import ChaosPlan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chaos", description=__doc__.split("\n")[0])
    full = ChaosPlan.full()
    parser.add_argument("--jobs", type=int, default=full.jobs, help="jobs in the batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=full.workers, help="worker nodes alive at once")
    parser.add_argument("--kill-every", type=float, default=full.kill_every_s, help="mean seconds between SIGKILLs")
    parser.add_argument("--s3-outage", type=float, default=full.s3_outage_s, help="seconds the S3 server is down")
    parser.add_argument("--seed", type=int, default=full.seed, help="seed of the batch, the kills and the simulator")
    parser.add_argument("--timeout", type=float, default=full.timeout_s, help="seconds to wait for the batch")
    parser.add_argument("--state-dir", type=Path, help="where data and logs go (default: a new temp folder)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    plan = replace(
        full,
        jobs=args.jobs,
        workers=args.workers,
        kill_every_s=args.kill_every,
        s3_outage_s=args.s3_outage,
        seed=args.seed,
        timeout_s=args.timeout,
    )
    # A short path: SeaweedFS puts unix sockets under it, and those are limited to 108 bytes.
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="genq-chaos-"))
    configure_logging(level=logging.WARNING)  # the runner's own progress lines, not genq's debug chatter
    console = Console()
    result = run_chaos(plan, state_dir, say=lambda line: console.print(line, soft_wrap=True))
    print_result(console, result, markdown=args.markdown)
    (state_dir / "chaos-report.json").write_text(
        json.dumps(
            {
                "plan": asdict(plan),
                "batch_s": result.batch_s,
                "disruptions": asdict(result.disruptions),
                **result.audit.to_dict(),
            },
            indent=2,
        )
    )
    console.print(f"report: {state_dir / 'chaos-report.json'}; logs: {state_dir / 'stack' / 'logs'}")
    return 0 if result.audit.ok else 1


def print_result(console: Console, result: ChaosResult, *, markdown: bool = False) -> None:
    done, audit = result.disruptions, result.audit
    console.print(
        f"batch of {result.plan.jobs} jobs ended in {result.batch_s:.0f} s; disruptions: {done.node_kills} worker "
        f"nodes and {done.pool_kills} pool processes SIGKILLed, Redis restarted {done.redis_restarts}x, S3 down "
        f"{done.s3_outages}x ({done.s3_down_s:.0f} s), webhook receiver black-holed {done.webhook_outages}x with "
        f"{done.events_trimmed} events trimmed from the stream meanwhile"
    )
    table = Table("check", "found", "expected", "", title="chaos audit (from the outside)")
    for check in audit.checks:
        table.add_row(check.what, check.found, check.expected, "ok" if check.ok else "[red]FAIL[/red]")
    console.print(table)
    outcomes = Table("outcome / code", "jobs", title="how the jobs ended")
    for outcome, count in sorted(audit.outcomes.items(), key=lambda kv: -kv[1]):
        outcomes.add_row(outcome, str(count))
    console.print(outcomes)
    injected = Table("fault or refusal", "times", title="what the simulator did (its own counters)")
    for name, count in sorted(audit.injected.items(), key=lambda kv: -kv[1]):
        injected.add_row(name, str(count))
    console.print(injected)
    for problem in audit.problems[:30]:
        console.print(f"[red]{problem}[/red]")
    if len(audit.problems) > 30:
        console.print(f"... and {len(audit.problems) - 30} more problems (chaos-report.json)")
    console.print("[green]every check holds[/green]" if audit.ok else "[red]some checks failed[/red]")
    if markdown:
        console.print("| check | found | expected |\n| --- | --- | --- |", soft_wrap=True)
        for check in audit.checks:
            console.print(f"| {check.what} | {check.found} | {check.expected} |", soft_wrap=True, markup=False)


if __name__ == "__main__":
    sys.exit(main())
