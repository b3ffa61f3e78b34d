"""`genq batch --dry-run`: everything is validated and reported, nothing is sent or created."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from config.settings import Settings
from producer.cli import app
from tests.conftest import SIM_KEY, RunningSimulator
from workers.runtime import make_store


def test_dry_run_lists_every_bad_row_estimates_cost_and_sends_nothing(
    settings: Settings, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A file with two bad rows: exit 1, both rows named with line and reason, the per-model counts and the
    cost from the price table printed, and the simulator saw no create and the job store no batch."""
    csv_file = tmp_path / "night.csv"
    csv_file.write_text(
        "id,prompt,model,n,duration\n"
        "a,a cat,,2,\n"
        "b,a video,wan2.5-t2v-preview,,10\n"
        "c,too many,,9,\n"
        "a,same id again,,1,\n"
    )
    env = {
        "DASHSCOPE_API_KEY": SIM_KEY,
        "GENQ_DASHSCOPE_BASE_URL": simulator.base_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_PRICES": '{"wan2.5-t2i-preview": 0.03, "wan2.5-t2v-preview": 0.1}',
    }
    result = CliRunner().invoke(app, ["batch", str(csv_file), "--dry-run"], env=env, terminal_width=200)
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # the console wraps long lines at its own width
    assert "checked 4 rows" in output and "2 valid" in output
    assert re.search(r"\b4\b\W+n\W+must be 1-4 for wan2.5-t2i-preview; got 9", output)
    assert re.search(r"\b5\b\W+id\W+duplicate id 'a', first used on line 2", output)
    assert "estimated cost: 1.06" in output  # 2 images x 0.03 + 10 s x 0.1
    assert simulator.counters().get("creates", 0) == 0
    assert make_store(settings).batch_summary("night") is None
