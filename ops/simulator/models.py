"""The simulator's own view of the models: its endpoints, limits and request rules.

Deliberately a separate copy of the contract (`dashscope-api.md`), not an import of genq's catalogue: the
simulator stands in for a remote service and must stay as independent of our client as the real one is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

IMAGE_SYNTHESIS = "/services/aigc/text2image/image-synthesis"
IMAGE_GENERATION = "/services/aigc/image-generation/generation"
VIDEO_SYNTHESIS = "/services/aigc/video-generation/video-synthesis"
SYNC_GENERATION = "/services/aigc/multimodal-generation/generation"


@dataclass(frozen=True)
class SizeRule:
    """Which `W*H` sizes a model accepts: each bound that is set must hold (an empty rule accepts any size)."""

    fixed: tuple[str, ...] = ()  # only these sizes
    side: tuple[int, int] | None = None  # width and height each within [low, high]
    pixels: tuple[int, int] | None = None  # width * height within [low, high]
    aspect: tuple[float, float] | None = None  # width / height within [low, high]


@dataclass(frozen=True)
class SimModel:
    name: str
    path: str  # the create URL; SYNC_GENERATION for a model served only synchronously
    submit_per_s: int
    concurrency: int
    prompt_max: int
    size_rule: SizeRule
    default_size: str
    durations: tuple[int, ...] = ()
    sync: bool = False  # also served by the sync multimodal-generation endpoint

    @property
    def video(self) -> bool:
        return self.path == VIDEO_SYNTHESIS

    @property
    def paths(self) -> frozenset[str]:
        return frozenset({self.path, SYNC_GENERATION} if self.sync else {self.path})

    @property
    def qwen(self) -> bool:
        """A Qwen-Image model: one image unless n says otherwise, and its own sync answer (004:183-203)."""
        return self.name.startswith("qwen-image")

    @property
    def default_n(self) -> int:
        # Wan's documented default is 4 (003:167); the Qwen examples send no n and get one image (004:201, 370).
        return 1 if self.qwen else 4


_QWEN = ("1664*928", "928*1664", "1328*1328", "1472*1104", "1104*1472")
_VIDEO = (
    "832*480",
    "480*832",
    "624*624",
    "1280*720",
    "720*1280",
    "960*960",
    "1088*832",
    "832*1088",
    "1920*1080",
    "1080*1920",
    "1440*1440",
    "1632*1248",
    "1248*1632",
)
#: wan2.5/2.6: total pixels in [768*768, 1440*1440], aspect ratio in [1:4, 4:1] (002:6, 003:133).
_WAN_TOTAL = SizeRule(pixels=(768 * 768, 1440 * 1440), aspect=(1 / 4, 4.0))
#: wan2.2 and earlier: each side in [512, 1440] (002:7, 003:915).
_WAN_SIDE = SizeRule(side=(512, 1440))
#: qwen-image-2.0 series: custom width and height, total pixels in [512*512, 2048*2048]; the pages give no aspect
#: rule (004:107, 624), and their recommended 2688*1536 has a side over 2048, so there is no side rule either.
_QWEN2_TOTAL = SizeRule(pixels=(512 * 512, 2048 * 2048))

MODELS: dict[str, SimModel] = {
    m.name: m
    for m in (
        SimModel("wan2.6-t2i", IMAGE_GENERATION, 5, 5, 2100, _WAN_TOTAL, "1280*1280", sync=True),
        SimModel("wan2.5-t2i-preview", IMAGE_SYNTHESIS, 5, 5, 2000, _WAN_TOTAL, "1280*1280"),
        *(
            SimModel(n, IMAGE_SYNTHESIS, 2, 2, 800, _WAN_SIDE, "1024*1024")
            for n in (
                "wan2.2-t2i-flash",
                "wan2.2-t2i-plus",
                "wanx2.1-t2i-turbo",
                "wanx2.1-t2i-plus",
                "wanx2.0-t2i-turbo",
            )
        ),
        *(
            SimModel(n, IMAGE_SYNTHESIS, 2, 2, 800, SizeRule(fixed=_QWEN), "1664*928", sync=True)
            for n in ("qwen-image", "qwen-image-plus")
        ),
        # Served only synchronously (004:121). Prompt length and limits are not on the pages: [inferred] as for
        # the async Qwen models.
        *(
            # [inferred] 2,100: the page's own example prompt for qwen-image-2.0-pro has 2,045 characters (004:314).
            SimModel(n, SYNC_GENERATION, 2, 2, 2100, _QWEN2_TOTAL, "2048*2048")
            for n in ("qwen-image-2.0", "qwen-image-2.0-pro")
        ),
        SimModel("qwen-image-max", SYNC_GENERATION, 2, 2, 800, SizeRule(fixed=_QWEN), "1664*928"),
        SimModel("wan2.6-t2v", VIDEO_SYNTHESIS, 5, 5, 2000, SizeRule(fixed=_VIDEO), "1280*720", (5, 10, 15)),
        SimModel("wan2.5-t2v-preview", VIDEO_SYNTHESIS, 5, 5, 2000, SizeRule(fixed=_VIDEO), "1280*720", (5, 10)),
        *(
            SimModel(n, VIDEO_SYNTHESIS, 2, 2, 800, SizeRule(fixed=_VIDEO), "1280*720", (5,))
            for n in ("wan2.2-t2v-plus", "wanx2.1-t2v-turbo", "wanx2.1-t2v-plus")
        ),
    )
}

#: `W*H` in ASCII digits (`str.isdigit` would also take `²`, which `int` refuses).
_SIZE = re.compile(r"([0-9]{1,9})\*([0-9]{1,9})", re.ASCII)


def size_problem(model: SimModel, size: str) -> str | None:
    """The service's complaint about `size`, or None when it is acceptable."""
    match = _SIZE.fullmatch(size)
    if match is None:
        return f"The size '{size}' is invalid, it should be like '1024*1024'."
    rule, width, height = model.size_rule, int(match[1]), int(match[2])
    if rule.fixed:
        return None if size in rule.fixed else f"The size '{size}' is not supported by {model.name}."
    if rule.side and not (rule.side[0] <= width <= rule.side[1] and rule.side[0] <= height <= rule.side[1]):
        return f"The size '{size}' is out of range: width and height must be in [{rule.side[0]}, {rule.side[1]}]."
    pixels_ok = rule.pixels is None or rule.pixels[0] <= width * height <= rule.pixels[1]
    # A zero height fails the pixel rule; it must not reach the division.
    aspect_ok = rule.aspect is None or (height > 0 and rule.aspect[0] <= width / height <= rule.aspect[1])
    if pixels_ok and aspect_ok:
        return None
    bounds = [f"total pixels must be in [{_area(rule.pixels[0])}, {_area(rule.pixels[1])}]"] if rule.pixels else []
    if rule.aspect:
        bounds.append(f"the aspect ratio in [{_ratio(rule.aspect[0])}, {_ratio(rule.aspect[1])}]")
    return f"The size '{size}' is out of range: {' and '.join(bounds)}."


def _area(pixels: int) -> str:
    """`768*768` for a square number of pixels, as the pages write the bounds; else the number."""
    side = math.isqrt(pixels)
    return f"{side}*{side}" if side * side == pixels else str(pixels)


def _ratio(value: float) -> str:
    return f"{value:g}:1" if value >= 1 else f"1:{1 / value:g}"
