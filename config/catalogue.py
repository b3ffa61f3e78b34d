"""The model catalogue: every model of `dashscope-api.md`, with its protocol, limits and defaults.

The figures are the documented ones ([doc]); the few marked [inferred] are our reading and are kept here,
in one place, so that a wrong one is a one-line fix. Validation of a request against these rules lives in
`workers/requests.py`; quota mechanisms read `submit_rate_per_s` and `max_concurrent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Protocol(StrEnum):
    """Which create endpoint and body shape a model speaks."""

    IMAGE_SYNTHESIS = "image-synthesis"  # old image protocol: input.prompt, output.results[]
    IMAGE_GENERATION = "image-generation"  # wan2.6: input.messages, output.choices[]
    VIDEO_SYNTHESIS = "video-synthesis"  # video: input.prompt, output.video_url


class Kind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class SizeRule(StrEnum):
    """How a model constrains `W*H`."""

    TOTAL_PIXELS = "total-pixels"  # wan2.5/2.6: 768*768 <= W*H <= 1440*1440, aspect 1:4..4:1
    PER_SIDE = "per-side"  # wan2.2 and earlier: 512 <= W, H <= 1440
    FIXED = "fixed"  # a fixed list (qwen-image, video resolutions)


CREATE_PATHS = {
    Protocol.IMAGE_SYNTHESIS: "/services/aigc/text2image/image-synthesis",
    Protocol.IMAGE_GENERATION: "/services/aigc/image-generation/generation",
    Protocol.VIDEO_SYNTHESIS: "/services/aigc/video-generation/video-synthesis",
}

NEGATIVE_PROMPT_MAX_CHARS = 500
N_MIN, N_MAX = 1, 4
SEED_MIN, SEED_MAX = 0, 2_147_483_647
TOTAL_PIXELS_MIN, TOTAL_PIXELS_MAX = 768 * 768, 1440 * 1440
ASPECT_MIN, ASPECT_MAX = 1 / 4, 4 / 1
SIDE_MIN, SIDE_MAX = 512, 1440

QWEN_IMAGE_SIZES = ("1664*928", "928*1664", "1328*1328", "1472*1104", "1104*1472")
# [inferred] the resolutions the Wan video models accept (480P, 720P, 1080P families).
VIDEO_SIZES_720P = ("1280*720", "720*1280", "960*960", "1088*832", "832*1088")
VIDEO_SIZES_480P = ("832*480", "480*832", "624*624")
VIDEO_SIZES_1080P = ("1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    protocol: Protocol
    prompt_max_chars: int
    size_rule: SizeRule
    default_size: str
    submit_rate_per_s: float
    max_concurrent: int
    fixed_sizes: tuple[str, ...] = ()
    max_n: int = N_MAX
    durations_s: tuple[int, ...] = ()  # video only
    default_duration_s: int | None = None
    supports_negative_prompt: bool = True

    @property
    def create_path(self) -> str:
        return CREATE_PATHS[self.protocol]


def _image(name: str, *, prompt_max: int, rule: SizeRule, size: str, rate: float, slots: int) -> ModelSpec:
    protocol = Protocol.IMAGE_GENERATION if name.startswith("wan2.6") else Protocol.IMAGE_SYNTHESIS
    return ModelSpec(name, Kind.IMAGE, protocol, prompt_max, rule, size, rate, slots)


def _video(
    name: str, *, prompt_max: int, sizes: tuple[str, ...], durations: tuple[int, ...], rate: float, slots: int
) -> ModelSpec:
    return ModelSpec(
        name,
        Kind.VIDEO,
        Protocol.VIDEO_SYNTHESIS,
        prompt_max,
        SizeRule.FIXED,
        "1280*720",
        rate,
        slots,
        fixed_sizes=sizes,
        max_n=1,
        durations_s=durations,
        default_duration_s=5,
    )


_MODELS = (
    _image("wan2.6-t2i", prompt_max=2100, rule=SizeRule.TOTAL_PIXELS, size="1280*1280", rate=5, slots=5),
    _image("wan2.5-t2i-preview", prompt_max=2000, rule=SizeRule.TOTAL_PIXELS, size="1280*1280", rate=5, slots=5),
    *(
        _image(name, prompt_max=800, rule=SizeRule.PER_SIDE, size="1024*1024", rate=2, slots=2)
        for name in (
            "wan2.2-t2i-flash",
            "wan2.2-t2i-plus",
            "wanx2.1-t2i-turbo",
            "wanx2.1-t2i-plus",
            "wanx2.0-t2i-turbo",
        )
    ),
    *(
        ModelSpec(
            name,
            Kind.IMAGE,
            Protocol.IMAGE_SYNTHESIS,
            800,
            SizeRule.FIXED,
            "1664*928",
            2,
            2,
            fixed_sizes=QWEN_IMAGE_SIZES,
            max_n=1,
        )
        for name in ("qwen-image", "qwen-image-plus")
    ),
    _video(
        "wan2.6-t2v",
        prompt_max=2000,
        sizes=VIDEO_SIZES_720P + VIDEO_SIZES_1080P,
        durations=(5, 10, 15),
        rate=5,
        slots=5,
    ),
    _video(
        "wan2.5-t2v-preview",
        prompt_max=2000,
        sizes=VIDEO_SIZES_480P + VIDEO_SIZES_720P + VIDEO_SIZES_1080P,
        durations=(5, 10),
        rate=5,
        slots=5,
    ),
    *(
        _video(name, prompt_max=800, sizes=VIDEO_SIZES_480P + VIDEO_SIZES_1080P, durations=(5,), rate=2, slots=2)
        for name in ("wan2.2-t2v-plus", "wanx2.1-t2v-turbo", "wanx2.1-t2v-plus")
    ),
)

CATALOGUE: dict[str, ModelSpec] = {m.name: m for m in _MODELS}


def model_spec(name: str) -> ModelSpec:
    """The model's spec; `KeyError` names the known models."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOGUE))}") from None
