"""`genq report`: an HTML contact sheet that a real headless Chromium renders with every thumbnail loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from producer.cli.report import render, store_report
from tests.conftest import RunningSimulator
from tests.stage_runner import enqueue, run
from workers.runtime import Runtime

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed by the test setup when the machine does not have it yet."""
    if not Path(CHROMIUM).exists():
        if shutil.which("apt-get") is None:
            pytest.fail("Chromium is needed for the report test and apt-get is not available to install it")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True, timeout=1200
        )
    return CHROMIUM


def headless(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_renders_in_chromium_with_every_image_visible(
    runtime: Runtime, simulator: RunningSimulator, chromium: str, tmp_path: Path
) -> None:
    """Two jobs that succeed (3 images) and one refused by moderation: the page is stored in the bucket,
    Chromium loads all 3 thumbnails, the failure shows its code, a prompt's markup is escaped, a capped page
    says what it left out, and the screenshot is not blank."""
    rows = [
        {"id": "a", "prompt": "a <b>bold</b> cat", "n": "2", "seed": "7"},
        {"id": "b", "prompt": "a dog"},
        {"id": "c", "prompt": "x sim:task_inspection"},
    ]
    run(runtime, enqueue(runtime, *rows, batch_id="sheet"), timeout_s=30)
    assert simulator.faults_fired() == {"task_inspection": 1}
    page, made = render(runtime.store, runtime.results, "sheet")
    assert (made.jobs, made.images, made.missing) == (3, 3, 0)
    assert "a &lt;b&gt;bold&lt;/b&gt; cat" in page and "<b>bold</b>" not in page
    assert "DataInspectionFailed" in page
    capped, _ = render(runtime.store, runtime.results, "sheet", max_jobs=2)
    assert "the first 2 of 3 jobs" in capped and capped.count('class="card') == 2
    key = store_report(runtime.results, "sheet", page)
    assert key == "sheet/report.html" and list(runtime.results.keys("sheet/report.html")) == [key]

    local = tmp_path / "report.html"
    local.write_text(page)
    dom = headless(chromium, "--virtual-time-budget=5000", "--dump-dom", local.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = re.search(r'data-images-shown="(\d+)"', dom.stdout)
    total = re.search(r'data-images-total="(\d+)"', dom.stdout)
    assert shown and total and (shown.group(1), total.group(1)) == ("3", "3"), dom.stdout[:500]
    assert "3 of 3 images shown" in dom.stdout

    shot = tmp_path / "report.png"  # kept under the test's tmp folder for a person to look at
    taken = headless(chromium, "--window-size=1200,800", f"--screenshot={shot}", local.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, borders and thumbnails, not a blank page
