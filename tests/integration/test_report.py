"""`genq report`: an HTML contact sheet that a real headless Chromium renders with every thumbnail loaded."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from producer.cli.report import render, store_report
from tests.conftest import RunningSimulator, headless, images_shown
from tests.stage_runner import enqueue, run
from workers.runtime import Runtime


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
    assert images_shown(chromium, local) == (3, 3)

    shot = tmp_path / "report.png"  # kept under the test's tmp folder for a person to look at
    taken = headless(chromium, "--window-size=1200,800", f"--screenshot={shot}", local.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, borders and thumbnails, not a blank page
