"""The simulator's own view of the models: its endpoints, limits and request rules.

Deliberately a separate copy of the contract (`dashscope-api.md`), not an import of genq's catalogue: the
simulator stands in for a remote service and must stay as independent of our client as the real one is.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SYNTHESIS = "/services/aigc/text2image/image-synthesis"
IMAGE_GENERATION = "/services/aigc/image-generation/generation"
VIDEO_SYNTHESIS = "/services/aigc/video-generation/video-synthesis"
SYNC_GENERATION = "/services/aigc/multimodal-generation/generation"


@dataclass(frozen=True)
class SimModel:
    name: str
    path: str
    submit_per_s: int
    concurrency: int
    prompt_max: int
    size_rule: str  # "total" | "side" | "fixed"
    default_size: str
    fixed_sizes: tuple[str, ...] = ()
    durations: tuple[int, ...] = ()
    sync: bool = False  # also served by the sync multimodal-generation endpoint

    @property
    def video(self) -> bool:
        return self.path == VIDEO_SYNTHESIS

    @property
    def paths(self) -> frozenset[str]:
        return frozenset({self.path, SYNC_GENERATION} if self.sync else {self.path})


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

MODELS: dict[str, SimModel] = {
    m.name: m
    for m in (
        SimModel("wan2.6-t2i", IMAGE_GENERATION, 5, 5, 2100, "total", "1280*1280", sync=True),
        SimModel("wan2.5-t2i-preview", IMAGE_SYNTHESIS, 5, 5, 2000, "total", "1280*1280"),
        *(
            SimModel(n, IMAGE_SYNTHESIS, 2, 2, 800, "side", "1024*1024")
            for n in (
                "wan2.2-t2i-flash",
                "wan2.2-t2i-plus",
                "wanx2.1-t2i-turbo",
                "wanx2.1-t2i-plus",
                "wanx2.0-t2i-turbo",
            )
        ),
        *(
            SimModel(n, IMAGE_SYNTHESIS, 2, 2, 800, "fixed", "1664*928", _QWEN, sync=True)
            for n in ("qwen-image", "qwen-image-plus")
        ),
        SimModel("wan2.6-t2v", VIDEO_SYNTHESIS, 5, 5, 2000, "fixed", "1280*720", _VIDEO, (5, 10, 15)),
        SimModel("wan2.5-t2v-preview", VIDEO_SYNTHESIS, 5, 5, 2000, "fixed", "1280*720", _VIDEO, (5, 10)),
        *(
            SimModel(n, VIDEO_SYNTHESIS, 2, 2, 800, "fixed", "1280*720", _VIDEO, (5,))
            for n in ("wan2.2-t2v-plus", "wanx2.1-t2v-turbo", "wanx2.1-t2v-plus")
        ),
    )
}


def size_problem(model: SimModel, size: str) -> str | None:
    """The service's complaint about `size`, or None when it is acceptable."""
    parts = size.split("*")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return f"The size '{size}' is invalid, it should be like '1024*1024'."
    width, height = int(parts[0]), int(parts[1])
    if model.size_rule == "fixed":
        return None if size in model.fixed_sizes else f"The size '{size}' is not supported by {model.name}."
    if model.size_rule == "side":
        ok = 512 <= width <= 1440 and 512 <= height <= 1440
        return None if ok else f"The size '{size}' is out of range: width and height must be in [512, 1440]."
    pixels_ok = 768 * 768 <= width * height <= 1440 * 1440
    ratio_ok = 0.25 <= width / height <= 4
    return (
        None
        if pixels_ok and ratio_ok
        else (
            f"The size '{size}' is out of range: total pixels must be in [768*768, 1440*1440] "
            "and the aspect ratio in [1:4, 4:1]."
        )
    )
