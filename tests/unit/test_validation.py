"""Validation against the catalogue: one test (or one parametrised table) per rule of dashscope-api.md."""

from __future__ import annotations

import pytest

from config.catalogue import shipped_catalogue
from workers.errors import RequestInvalid
from workers.requests import RequestInput, validate_request

SHIPPED = shipped_catalogue()


def check(**fields: object) -> None:
    validate_request(
        RequestInput(**{"prompt": "a cat", **fields}), catalogue=SHIPPED, default_model="wan2.5-t2i-preview"
    )  # type: ignore[arg-type]


def refused(**fields: object) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        check(**fields)
    return info.value


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("wan2.6-t2i", 2100),
        ("wan2.5-t2i-preview", 2000),
        ("wan2.2-t2i-flash", 800),
        ("wanx2.1-t2i-turbo", 800),
        ("wanx2.0-t2i-turbo", 800),
    ],
)
def test_prompt_length_limit_per_model(model: str, limit: int) -> None:
    """A prompt of exactly the model's limit passes; one character more is refused, naming the limit."""
    check(model=model, prompt="字" * limit)
    error = refused(model=model, prompt="字" * (limit + 1))
    assert error.field == "prompt" and str(limit) in error.reason


def test_prompt_is_required() -> None:
    """An empty or blank prompt is refused."""
    assert refused(prompt="   ").field == "prompt"


def test_negative_prompt_limit_is_500() -> None:
    """A negative prompt of 500 characters passes; 501 is refused."""
    check(negative_prompt="x" * 500)
    assert refused(negative_prompt="x" * 501).field == "negative_prompt"


@pytest.mark.parametrize("n", ["0", "5", "-1", "2.5", "four"])
def test_n_must_be_an_integer_from_1_to_4(n: str) -> None:
    """n outside 1..4, or not an integer, is refused."""
    assert refused(n=n).field == "n"


def test_n_defaults_to_1_not_the_services_4() -> None:
    """With no n the request asks for one image (the service would bill four)."""
    assert validate_request(RequestInput(prompt="a cat"), catalogue=SHIPPED, default_model="wan2.5-t2i-preview").n == 1


@pytest.mark.parametrize(
    ("seed", "ok"), [("0", True), ("2147483647", True), ("-1", False), ("2147483648", False), ("abc", False)]
)
def test_seed_range(seed: str, ok: bool) -> None:
    """The seed must be an integer in 0..2147483647."""
    if ok:
        check(seed=seed)
    else:
        assert refused(seed=seed).field == "seed"


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("768*768", True),
        ("1440*1440", True),
        ("768*2700", True),
        ("1280*720", True),
        ("767*768", False),  # under 768*768 pixels
        ("1441*1440", False),  # over 1440*1440 pixels
        ("600*2500", False),  # enough pixels, but narrower than 1:4
        ("2500*600", False),  # wider than 4:1
    ],
)
def test_size_rule_of_wan25_and_wan26(size: str, ok: bool) -> None:
    """wan2.5/2.6: total pixels within 768*768..1440*1440 and aspect ratio within 1:4..4:1."""
    for model in ("wan2.5-t2i-preview", "wan2.6-t2i"):
        if ok:
            check(model=model, size=size)
        else:
            assert refused(model=model, size=size).field == "size"


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("512*512", True),
        ("1440*1440", True),
        ("512*1440", True),
        ("511*1024", False),
        ("1024*1441", False),
        ("768*2700", False),
    ],
)
def test_size_rule_of_wan22_and_earlier(size: str, ok: bool) -> None:
    """wan2.2 and earlier: each side within 512..1440."""
    for model in ("wan2.2-t2i-flash", "wan2.2-t2i-plus", "wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.0-t2i-turbo"):
        if ok:
            check(model=model, size=size)
        else:
            assert refused(model=model, size=size).field == "size"


@pytest.mark.parametrize("size", ["1024x1024", "1024X1024", "1024 * 1024", "1024", "*1024", "big"])
def test_size_must_be_w_star_h(size: str) -> None:
    """Size is W*H with '*'; the error for 'x' says so."""
    error = refused(size=size)
    assert error.field == "size"
    if "x" in size.lower():
        assert "'*'" in error.reason


def test_default_size_per_generation() -> None:
    """No size: 1280*1280 for wan2.5/2.6, 1024*1024 for 2.2 and earlier."""

    def size_of(model: str) -> str:
        return validate_request(RequestInput(prompt="a cat", model=model), catalogue=SHIPPED, default_model=model).size

    assert size_of("wan2.6-t2i") == size_of("wan2.5-t2i-preview") == "1280*1280"
    assert size_of("wan2.2-t2i-flash") == size_of("wanx2.0-t2i-turbo") == "1024*1024"


def test_unknown_model_is_refused_with_the_known_ones_listed() -> None:
    """An unknown model names itself and the models that exist."""
    error = refused(model="dall-e-3")
    assert error.field == "model" and "dall-e-3" in error.reason and "wan2.5-t2i-preview" in error.reason


def test_qwen_image_accepts_only_its_fixed_sizes_and_one_image() -> None:
    """qwen-image takes one of five sizes and n=1."""
    check(model="qwen-image", size="1328*1328")
    assert refused(model="qwen-image", size="1280*1280").field == "size"
    assert refused(model="qwen-image", size="1328*1328", n="2").field == "n"


def test_video_duration_rules() -> None:
    """Video takes a documented duration; images refuse one."""
    check(model="wan2.5-t2v-preview", size="1280*720", duration="10")
    assert refused(model="wan2.5-t2v-preview", size="1280*720", duration="7").field == "duration"
    assert refused(model="wan2.5-t2i-preview", duration="5").field == "duration"


def test_booleans_are_parsed_and_defaults_filled() -> None:
    """prompt_extend defaults to true and watermark to false; 'no'/'yes' are understood; junk is refused."""
    request = validate_request(
        RequestInput(prompt="a cat", prompt_extend="no", watermark="yes"),
        catalogue=shipped_catalogue(),
        default_model="wan2.5-t2i-preview",
    )
    assert (request.prompt_extend, request.watermark) == (False, True)
    assert refused(watermark="maybe").field == "watermark"


def test_equal_requests_have_equal_fingerprints() -> None:
    """Whitespace around fields does not change a request's identity; a different seed does."""

    def fingerprint(**fields: object) -> str:
        raw = RequestInput(**{"prompt": "a cat", **fields})  # type: ignore[arg-type]
        return validate_request(raw, catalogue=SHIPPED, default_model="wan2.5-t2i-preview").fingerprint()

    assert fingerprint(prompt=" a cat ", seed=" 4") == fingerprint(seed="4")
    assert fingerprint(seed="4") != fingerprint(seed="5")
