"""The simulator's model table: which sizes each model accepts, its defaults and its limits."""

from __future__ import annotations

import pytest

from ops.simulator.engine import Engine, SimConfig
from ops.simulator.models import MODELS, SYNC_GENERATION, size_problem
from ops.simulator.profiles import PROFILES, Profile

QWEN_FIXED = ("1664*928", "928*1664", "1328*1328", "1472*1104", "1104*1472")


@pytest.mark.parametrize("model", ["qwen-image-2.0", "qwen-image-2.0-pro"])
@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("512*512", True),
        ("2048*2048", True),
        ("2688*1536", True),  # a recommended size (004:626): a side over 2048 is fine
        ("8192*512", True),  # 16:1: the pages give the 2.0 series no aspect rule
        ("511*512", False),
        ("2049*2048", False),
        ("0*0", False),
        ("2048x2048", False),
    ],
)
def test_qwen_image_2_takes_any_size_whose_pixels_are_in_range(model: str, size: str, ok: bool) -> None:
    """The qwen-image-2.0 series takes a custom width and height with total pixels in [512*512, 2048*2048]."""
    assert (size_problem(MODELS[model], size) is None) is ok


@pytest.mark.parametrize("size", [*QWEN_FIXED, "2048*2048", "1024*1024", "1664*929"])
def test_qwen_image_max_takes_only_the_five_fixed_sizes(size: str) -> None:
    """qwen-image-max takes only 1664*928, 928*1664, 1328*1328, 1472*1104 and 1104*1472 (004:636-646)."""
    assert (size_problem(MODELS["qwen-image-max"], size) is None) is (size in QWEN_FIXED)


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("768*2700", True),  # the pages' example of a valid size
        ("600*2400", True),  # exactly 1:4
        ("1440*1440", True),
        ("590*2400", False),  # pixels fine, narrower than 1:4
        ("1440*1441", False),
        ("767*767", False),
        ("1024*0", False),  # no division by zero
    ],
)
def test_wan25_and_wan26_keep_their_pixel_and_aspect_rule(size: str, ok: bool) -> None:
    """wan2.5/2.6 keep total pixels in [768*768, 1440*1440] and the aspect ratio in [1:4, 4:1]."""
    for model in ("wan2.5-t2i-preview", "wan2.6-t2i"):
        assert (size_problem(MODELS[model], size) is None) is ok, model


def test_size_complaints_name_the_models_bounds() -> None:
    """The complaint gives each model's own bounds, written as the pages write them."""
    assert size_problem(MODELS["wan2.5-t2i-preview"], "100*100") == (
        "The size '100*100' is out of range: total pixels must be in [768*768, 1440*1440] "
        "and the aspect ratio in [1:4, 4:1]."
    )
    assert size_problem(MODELS["qwen-image-2.0"], "100*100") == (
        "The size '100*100' is out of range: total pixels must be in [512*512, 2048*2048]."
    )


@pytest.mark.parametrize("size", ["²*²", "١٠٢٤*١٠٢٤", "1024*", "*", "", "9" * 5000 + "*1", "1024*1024*1"])
def test_odd_sizes_are_refused_not_crashed_on(size: str) -> None:
    """A size of other digits than ASCII, or of too many, is refused with a complaint (never an exception)."""
    assert "invalid" in (size_problem(MODELS["qwen-image-2.0"], size) or "")


@pytest.mark.parametrize(("model", "size"), [("qwen-image-2.0", "2048*2048"), ("qwen-image-max", "1664*928")])
def test_sync_only_models_defaults(model: str, size: str) -> None:
    """The 2.0 series defaults to 2048*2048 and max to 1664*928; all three are served by the sync URL only,
    with one image by default."""
    for name in (model, "qwen-image-2.0-pro") if model == "qwen-image-2.0" else (model,):
        found = MODELS[name]
        assert found.default_size == size and size_problem(found, size) is None
        assert found.paths == {SYNC_GENERATION} and found.default_n == 1


def test_sync_only_models_limits_are_2_per_second_and_2_at_once_unless_overridden() -> None:
    """The new Qwen models take 2 creates per second and run 2 at once, and a profile or the admin endpoint
    can change that like any other model's."""
    engine = Engine(SimConfig(profile=PROFILES["fast"]))
    for name in ("qwen-image-2.0", "qwen-image-2.0-pro", "qwen-image-max"):
        scope = engine.scope("default", MODELS[name])
        assert (scope.submit_per_s, scope.concurrency) == (2, 2)
    engine.configure(limits={"qwen-image-2.0-pro": [7, 3]})
    assert engine.scope("other", MODELS["qwen-image-2.0-pro"]).concurrency == 3
    tuned = Engine(SimConfig(profile=Profile("tuned", limits={"qwen-image-max": (4, 1)})))
    assert tuned.scope("default", MODELS["qwen-image-max"]).submit_per_s == 4
