"""The model catalogue as data: the shipped models, a config's additions and overrides, and `genq models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from config.catalogue import CatalogueInvalid, Protocol, build_catalogue, shipped_catalogue
from config.settings import ConfigInvalid, load_settings
from producer.cli import app, common
from producer.cli.display import PlainConsole
from workers.dashscope.protocol import create_body
from workers.errors import RequestInvalid
from workers.requests import RequestInput, validate_request

SHIPPED = shipped_catalogue()

#: A config that adds a model and raises a shipped one's limits (the issue's acceptance).
ADDS_AND_RAISES = """
[models."wan2.5-t2i-preview"]
submit_rate_per_s = 10
max_concurrent = 12

[models."acme-t2i"]
kind = "image"
protocol = "image-generation"
prompt_max_chars = 300
negative_prompt = false
n = [1, 2]
sizes = { rule = "per-side", min_side = 256, max_side = 2048 }
default_size = "1024*1024"
submit_rate_per_s = 1
max_concurrent = 3
"""


def request(catalogue: Any = SHIPPED, **fields: object) -> Any:
    return validate_request(
        RequestInput(**{"prompt": "a cat", **fields}),  # type: ignore[arg-type]
        catalogue=catalogue,
        default_model="wan2.5-t2i-preview",
    )


def refused(catalogue: Any = SHIPPED, **fields: object) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as caught:
        request(catalogue, **fields)
    return caught.value


def test_every_model_of_the_pages_ships_with_its_protocol() -> None:
    """The Qwen-Image 2.0 series and qwen-image-max (004:103-121) are synchronous only; the async Qwen and Wan models
    keep their task protocols."""
    synchronous = {name for name in SHIPPED if SHIPPED.spec(name).synchronous}
    assert synchronous == {"qwen-image-2.0", "qwen-image-2.0-pro", "qwen-image-max"}
    assert SHIPPED.spec("qwen-image-2.0-pro").create_path == "/services/aigc/multimodal-generation/generation"
    assert SHIPPED.spec("qwen-image-plus").protocol is Protocol.IMAGE_SYNTHESIS
    assert {"wan2.6-t2i", "wan2.5-t2i-preview", "wan2.6-t2v", "qwen-image"} <= set(SHIPPED)


def test_the_fixed_qwen_sizes_apply_to_the_series_the_pages_name_only() -> None:
    """qwen-image-max and -plus accept only the five fixed sizes (004:109); the 2.0 series takes any W*H between
    512*512 and 2048*2048 pixels (004:107), defaulting to 2048*2048 (004:624)."""
    assert request(model="qwen-image-2.0-pro", size="2688*1536").size == "2688*1536"
    assert request(model="qwen-image-2.0").size == "2048*2048"
    assert refused(model="qwen-image-2.0", size="2048*2049").field == "size"  # one pixel row over
    assert refused(model="qwen-image-2.0", size="511*512").field == "size"
    assert "accepts only 1664*928" in refused(model="qwen-image-max", size="2688*1536").reason
    assert refused(model="qwen-image-plus", size="1024*1024").field == "size"
    assert request(model="qwen-image-max").size == "1664*928"


def test_a_negative_prompt_over_the_limit_is_refused_naming_it() -> None:
    """The service would cut a negative prompt at 500 characters without a word (003:129); genq refuses it with
    the limit and the reason instead of sending a constraint that would be half ignored."""
    reason = refused(negative_prompt="x" * 501).reason
    assert "501 characters is over wan2.5-t2i-preview's limit of 500" in reason and "silently" in reason
    assert request(negative_prompt="x" * 500).negative_prompt == "x" * 500


def test_a_synchronous_models_body_is_one_user_message_with_its_parameters() -> None:
    """qwen-image-2.0-pro's body has the pages' shape (004:303-326): one user message with one text, and the
    negative prompt, size and switches in `parameters`, n included (Qwen makes one image without it)."""
    spec = SHIPPED.spec("qwen-image-2.0-pro")
    body = create_body(request(model=spec.name, negative_prompt="blurry", seed="7"), spec)
    assert body["input"] == {"messages": [{"role": "user", "content": [{"text": "a cat"}]}]}
    assert body["parameters"] == {
        "negative_prompt": "blurry",
        "size": "2048*2048",
        "n": 1,
        "prompt_extend": True,
        "watermark": False,
        "seed": 7,
    }


def test_a_config_that_adds_a_model_and_raises_limits_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file's model tables reach validation (the new model's own rules) and the quota (the raised limits
    of a shipped model, and the added model's), and `genq models` shows both, marking the configured figures."""
    config = tmp_path / "genq.toml"
    config.write_text(ADDS_AND_RAISES)
    configured = load_settings(config)
    catalogue = configured.catalogue

    assert request(catalogue, model="acme-t2i", size="256*2048", n="2").n == 2
    assert refused(catalogue, model="acme-t2i", prompt="x" * 301).field == "prompt"
    assert "does not take a negative prompt" in refused(catalogue, model="acme-t2i", negative_prompt="x").reason
    assert refused(catalogue, model="acme-t2i", n="3").reason == "must be 1-2 for acme-t2i; got 3"
    limits = configured.limits(configured.account, "wan2.5-t2i-preview")
    assert (limits.submit_rate_per_s, limits.max_concurrent, limits.slot_limit) == (10, 12, 24)
    assert configured.limits(configured.account, "acme-t2i").max_concurrent == 3
    assert configured.limits(configured.account, "wan2.6-t2i").max_concurrent == 5  # untouched

    # A console of a known width, whatever the terminal was when the command line was imported: nothing wrapped.
    wide = PlainConsole(stderr=False, width=250, height=50, color_system=None, force_terminal=False)
    monkeypatch.setattr(common, "console", wide)
    shown = CliRunner().invoke(app, ["models", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    wan25 = next(line for line in shown.output.splitlines() if "wan2.5-t2i-preview" in line)
    assert "10*" in wan25 and "12*" in wan25 and "2000 " in wan25  # the prompt limit is shipped: unmarked
    assert "acme-t2i" in shown.output and f"* = from {config}" in shown.output

    as_json = CliRunner().invoke(app, ["models", "--json", "--config", str(config)])
    listed = json.loads(as_json.output)["models"]
    assert listed["wan2.5-t2i-preview"]["sources"]["max_concurrent"] == str(config)
    assert listed["wan2.5-t2i-preview"]["sources"]["prompt_max_chars"] == "shipped"
    assert listed["qwen-image-2.0"]["synchronous"] is True
    assert listed["acme-t2i"]["sources"]["negative_prompt_max_chars"] == "default"  # neither source gave it


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('[models."wan2.6-t2i"]\nmax_concurrent = 0\n', "models.wan2.6-t2i.max_concurrent: Input should be greater"),
        ('[models."wan2.6-t2i"]\nn = [0, 4]\n', "models.wan2.6-t2i.n: must be [least, most]"),
        ('[models."wan2.6-t2i"]\ncolour = "red"\n', "models.wan2.6-t2i.colour: not a figure of a model; known: kind"),
        ('[models."wan2.6-t2i"]\ndefault_size = "2000*2000"\n', "default_size breaks the model's own size rule"),
        ('[models."new"]\nkind = "image"\n', "models.new.protocol: Field required"),
        ('[models."wan2.6-t2v"]\nprotocol = "image-synthesis"\n', "models.wan2.6-t2v: kind video does not go with"),
        ('default_model = "nope"\n', "default_model: unknown model 'nope'; known: qwen-image"),
        ('[models."wan2.6-t2i"]\nsizes = { rule = "square" }\n', "models.wan2.6-t2i.sizes"),
        ('[models."wan2.6-t2i"]\nmax_concurrent = true\n', "models.wan2.6-t2i: max_concurrent: a number, not true"),
        ('[models."wan2.6-t2i"]\nn = [true, true]\n', "models.wan2.6-t2i: n: a number, not true or false"),
        ('[models."wan2.6-t2i"]\nname = "other"\n', "models.wan2.6-t2i.name: a model's name is its table's name"),
        (
            '[models."wan2.6-t2i"]\nsizes = { rule = "total-pixels", min = "768*768", max = "99999*99999" }\n',
            "'99999*99999' has a side over 16,384 px",
        ),
    ],
)
def test_a_malformed_model_config_fails_at_start_naming_the_field(tmp_path: Path, table: str, named: str) -> None:
    """A config whose models cannot be used fails when the settings load, with the model, the field and why."""
    config = tmp_path / "genq.toml"
    config.write_text(table)
    with pytest.raises(ConfigInvalid, match="invalid settings") as caught:
        load_settings(config)
    assert named in str(caught.value)


_figures = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["image", "video", "audio", 3]),
        "protocol": st.sampled_from([p.value for p in Protocol] + ["ws", None]),
        "prompt_max_chars": st.integers(-5, 20_000) | st.floats(allow_nan=True) | st.text(max_size=3),
        "negative_prompt": st.booleans() | st.integers(),
        "n": st.lists(st.integers(-2, 20), max_size=3) | st.integers(),
        "sizes": st.fixed_dictionaries(
            {"rule": st.sampled_from(["fixed", "per-side", "total-pixels", "x"])},
            optional={
                "sizes": st.lists(st.sampled_from(["1024*1024", "1x1", "", "0*5"]), max_size=3),
                "min_side": st.integers(-1, 20_000),
                "max_side": st.integers(-1, 20_000),
                "min": st.sampled_from(["512*512", "1*1", "big"]),
                "max": st.sampled_from(["2048*2048", "1*1"]),
                "aspect": st.lists(st.sampled_from(["1:4", "4:1", "0:1", "x"]), max_size=3),
            },
        ),
        "default_size": st.sampled_from(["1024*1024", "2048*2048", "1664*928", "nope"]),
        "durations_s": st.lists(st.integers(-1, 5000), max_size=3),
        "default_duration_s": st.integers(-1, 20) | st.none(),
        "submit_rate_per_s": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 5),
        "max_concurrent": st.integers(-2, 200_000),
        "name": st.text(max_size=5),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["wan2.6-t2i", "qwen-image-2.0", "new-model", ""]), _figures)
def test_any_model_table_gives_a_catalogue_or_a_named_refusal(name: str, figures: dict[str, Any]) -> None:
    """For any figures under any model name (shipped or new), the catalogue is built or refused with
    `CatalogueInvalid` naming `models.<name>`; never another exception. A built one holds only usable models."""
    try:
        catalogue = build_catalogue({name: figures})
    except CatalogueInvalid as exc:
        assert str(exc).startswith(f"models.{name}")
        return
    spec = catalogue.spec(name)
    assert spec.submit_rate_per_s > 0 and spec.max_concurrent >= 1 and 1 <= spec.n_min <= spec.max_n
    assert request(catalogue, model=name, prompt="x").size == spec.default_size
