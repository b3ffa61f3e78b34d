"""The model catalogue: every model genq can run, with its protocol, request rules, defaults and limits.

The documented models ship as data (`config/models.toml`); a user's config adds models or overrides any figure
of a shipped one under `[models."name"]` (the `models` setting). `build_catalogue` merges the two, field by
field, and validates every model whole, so a malformed one fails at start with the model, the field and the
reason. The catalogue in force is `Settings.catalogue`; it remembers where each figure came from, for
`genq models`. Validation of a request against these rules lives in `workers/requests.py`; the quota reads
`submit_rate_per_s` and `max_concurrent` (an account's `limits` may override those two per account).
"""

from __future__ import annotations

import functools
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: The shipped catalogue, inside the package.
SHIPPED_FILE = Path(__file__).with_name("models.toml")
#: Where a figure came from, as `genq models` says it.
SHIPPED = "shipped"
CONFIGURED = "config"
DEFAULT = "default"  # a figure neither source gave: the field's default (`ModelSpec`)


class Protocol(StrEnum):
    """Which endpoint and body shape a model speaks."""

    IMAGE_SYNTHESIS = "image-synthesis"  # old image protocol: input.prompt, output.results[]
    IMAGE_GENERATION = "image-generation"  # wan2.6: input.messages, output.choices[]
    VIDEO_SYNTHESIS = "video-synthesis"  # video: input.prompt, output.video_url
    MULTIMODAL_GENERATION = "multimodal-generation"  # synchronous: input.messages, the images in the answer


class Kind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


CREATE_PATHS = {
    Protocol.IMAGE_SYNTHESIS: "/services/aigc/text2image/image-synthesis",
    Protocol.IMAGE_GENERATION: "/services/aigc/image-generation/generation",
    Protocol.VIDEO_SYNTHESIS: "/services/aigc/video-generation/video-synthesis",
    Protocol.MULTIMODAL_GENERATION: "/services/aigc/multimodal-generation/generation",
}

#: The service's own bounds, the same for every model (dashscope-api.md).
SEED_MIN, SEED_MAX = 0, 2_147_483_647
#: The most of anything a model's figures may say: far above every documented one, low enough to be a typo.
PROMPT_CHARS_CEILING = 10_000
N_CEILING = 16
SIDE_CEILING = 16_384
#: `W*H` in ASCII digits without leading zeros: sent upstream as written.
SIZE_PATTERN = re.compile(r"([1-9][0-9]{1,4})\*([1-9][0-9]{1,4})")
_RATIO = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


def parse_size(size: str) -> tuple[int, int] | None:
    """`W*H` as (width, height); None when it is not in that form."""
    match = SIZE_PATTERN.fullmatch(size)
    return (int(match[1]), int(match[2])) if match else None


def _a_size(size: str) -> str:
    """A size a model's figures may name: `W*H`, each side at most `SIDE_CEILING`."""
    dimensions = parse_size(size)
    if dimensions is None:
        raise ValueError(f"{size!r} is not W*H (digits, '*' between them)")
    if max(dimensions) > SIDE_CEILING:
        raise ValueError(f"{size!r} has a side over {SIDE_CEILING:,} px")
    return size


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        return _refuse_booleans(data, ("min_side", "max_side"))


class FixedSizes(_Rule):
    """A list of sizes, nothing else (qwen-image-max and -plus, the video models)."""

    rule: Literal["fixed"]
    sizes: tuple[str, ...] = Field(min_length=1)

    @field_validator("sizes")
    @classmethod
    def _each_a_size(cls, sizes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_a_size(size) for size in sizes)

    def problem(self, model: str, size: str, width: int, height: int) -> str | None:
        return None if size in self.sizes else f"{model} accepts only {', '.join(self.sizes)}; got {size}"

    def describe(self) -> str:
        return ", ".join(self.sizes)


class PerSide(_Rule):
    """Each side within bounds (wan2.2 and earlier: 512-1440)."""

    rule: Literal["per-side"]
    min_side: int = Field(ge=1, le=SIDE_CEILING)
    max_side: int = Field(ge=1, le=SIDE_CEILING)

    @model_validator(mode="after")
    def _ordered(self) -> PerSide:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is above max_side {self.max_side}")
        return self

    def problem(self, model: str, size: str, width: int, height: int) -> str | None:
        if self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side:
            return None
        return f"{model}: width and height must each be {self.min_side}-{self.max_side} px; got {size}"

    def describe(self) -> str:
        return f"each side {self.min_side}-{self.max_side} px"


class TotalPixels(_Rule):
    """Total pixels within bounds, written as sizes (`768*768`), and optionally an aspect range (`1:4`..`4:1`)."""

    rule: Literal["total-pixels"]
    min: str
    max: str
    aspect: tuple[str, str] | None = None

    @field_validator("min", "max")
    @classmethod
    def _sizes(cls, size: str) -> str:
        return _a_size(size)

    @field_validator("aspect")
    @classmethod
    def _ratios(cls, aspect: tuple[str, str] | None) -> tuple[str, str] | None:
        for ratio in aspect or ():
            if not _RATIO.fullmatch(ratio):
                raise ValueError(f"{ratio!r} is not a ratio such as 1:4")
        return aspect

    @model_validator(mode="after")
    def _ordered(self) -> TotalPixels:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min {self.min} has more pixels than max {self.max}")
        if self.aspect and self.aspect_bounds[0] > self.aspect_bounds[1]:
            raise ValueError(f"aspect {self.aspect[0]} is wider than {self.aspect[1]}")
        return self

    @property
    def min_pixels(self) -> int:
        return math.prod(parse_size(self.min) or (0, 0))

    @property
    def max_pixels(self) -> int:
        return math.prod(parse_size(self.max) or (0, 0))

    @property
    def aspect_bounds(self) -> tuple[float, float]:
        if self.aspect is None:
            return (0.0, math.inf)
        low, high = (_RATIO.fullmatch(r) for r in self.aspect)
        assert low is not None and high is not None  # checked by `_ratios`
        return (int(low[1]) / int(low[2]), int(high[1]) / int(high[2]))

    def problem(self, model: str, size: str, width: int, height: int) -> str | None:
        pixels = width * height
        if not self.min_pixels <= pixels <= self.max_pixels:
            return (
                f"{model}: total pixels must be between {self.min} and {self.max} "
                f"({self.min_pixels:,}-{self.max_pixels:,}); {size} has {pixels:,}"
            )
        low, high = self.aspect_bounds
        if not low <= width / height <= high:
            assert self.aspect is not None
            return f"{model}: aspect ratio must be within {self.aspect[0]} and {self.aspect[1]}; got {size}"
        return None

    def describe(self) -> str:
        aspect = f", aspect {self.aspect[0]} to {self.aspect[1]}" if self.aspect else ""
        return f"{self.min} to {self.max} pixels{aspect}"


SizeRule = Annotated[FixedSizes | PerSide | TotalPixels, Field(discriminator="rule")]


class ModelSpec(BaseModel):
    """One model's rules and limits, validated whole (a model that could not be sent correctly is refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Kind
    protocol: Protocol
    prompt_max_chars: int = Field(ge=1, le=PROMPT_CHARS_CEILING)
    negative_prompt: bool = True
    negative_prompt_max_chars: int = Field(500, ge=1, le=PROMPT_CHARS_CEILING)
    n: tuple[int, int] = (1, 4)
    sizes: SizeRule
    default_size: str
    durations_s: tuple[int, ...] = ()
    default_duration_s: int | None = None
    submit_rate_per_s: float = Field(gt=0, le=10_000, allow_inf_nan=False)
    max_concurrent: int = Field(ge=1, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `true` as 1 wherever a number goes: in a model's figures that is always a typo.
        numbers = ("prompt_max_chars", "negative_prompt_max_chars", "n", "durations_s", "default_duration_s")
        return _refuse_booleans(data, (*numbers, "submit_rate_per_s", "max_concurrent"))

    @field_validator("n")
    @classmethod
    def _n_range(cls, n: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= n[0] <= n[1] <= N_CEILING:
            raise ValueError(f"must be [least, most] with 1 <= least <= most <= {N_CEILING}; got {list(n)}")
        return n

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        video_protocol = self.protocol is Protocol.VIDEO_SYNTHESIS
        if video_protocol != (self.kind is Kind.VIDEO):
            raise ValueError(f"kind {self.kind} does not go with protocol {self.protocol}")
        size = parse_size(self.default_size)
        if size is None:
            raise ValueError(f"default_size {self.default_size!r} is not W*H")
        problem = self.sizes.problem(self.name, self.default_size, *size)
        if problem:
            raise ValueError(f"default_size breaks the model's own size rule ({problem})")
        if self.kind is Kind.VIDEO:
            if self.n != (1, 1):
                raise ValueError("a video model makes one video per task: n must be [1, 1]")
            if not self.durations_s or any(not 1 <= d <= 3600 for d in self.durations_s):
                raise ValueError("a video model needs durations_s: a list of 1-3600 second lengths")
            if self.default_duration_s not in self.durations_s:
                raise ValueError(f"default_duration_s {self.default_duration_s} is not one of durations_s")
        elif self.durations_s or self.default_duration_s is not None:
            raise ValueError("durations_s and default_duration_s apply to video models only")
        return self

    @property
    def create_path(self) -> str:
        return CREATE_PATHS[self.protocol]

    @property
    def synchronous(self) -> bool:
        """Answered by one call that holds the connection for the whole generation: no task to poll."""
        return self.protocol is Protocol.MULTIMODAL_GENERATION

    @property
    def n_min(self) -> int:
        return self.n[0]

    @property
    def max_n(self) -> int:
        return self.n[1]


def _refuse_booleans(data: Any, fields: tuple[str, ...]) -> Any:
    """`data` as given, or `ValueError` naming the first of `fields` that holds a boolean (alone or in a list)."""
    if isinstance(data, Mapping):
        for name in fields:
            value = data.get(name)
            items = value if isinstance(value, list | tuple) else [value]
            if any(isinstance(item, bool) for item in items):
                raise ValueError(f"{name}: a number, not true or false")
    return data


class CatalogueInvalid(ValueError):
    """A model of the shipped file or of a user's config cannot be used; the message names it and the field."""


@dataclass(frozen=True)
class Catalogue:
    """The models in force, and for each the source of each figure (`SHIPPED` or `CONFIGURED`)."""

    specs: Mapping[str, ModelSpec]
    sources: Mapping[str, Mapping[str, str]]

    def spec(self, name: str) -> ModelSpec:
        """The model's spec; `KeyError` names the known models."""
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.names())}") from None

    def get(self, name: str) -> ModelSpec | None:
        return self.specs.get(name)

    def names(self) -> list[str]:
        return sorted(self.specs)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.specs)

    def configured(self) -> list[str]:
        """The models a config added, or gave a figure of."""
        return [name for name in self.names() if CONFIGURED in self.sources.get(name, {}).values()]

    def source(self, name: str, field: str) -> str:
        """Where the model's figure came from: `SHIPPED`, `CONFIGURED`, or `DEFAULT` (neither gave it)."""
        return self.sources.get(name, {}).get(field, DEFAULT)


def shipped_tables() -> dict[str, dict[str, Any]]:
    """The shipped models as their TOML tables."""
    with SHIPPED_FILE.open("rb") as file:
        models: dict[str, dict[str, Any]] = tomllib.load(file)["models"]
    return models


def build_catalogue(configured: Mapping[str, Any]) -> Catalogue:
    """The shipped models with `configured` (a user's `[models."name"]` tables) merged over them: a table naming
    a shipped model overrides the figures it gives (a `sizes` table replaces the rule whole); one naming a new
    model must give every figure that has no default. Raises `CatalogueInvalid` naming the model, the field and
    the reason."""
    tables = shipped_tables()
    sources: dict[str, dict[str, str]] = {name: dict.fromkeys(table, SHIPPED) for name, table in tables.items()}
    for name, table in configured.items():
        if not isinstance(table, Mapping):
            raise CatalogueInvalid(f"models.{name}: must be a table of figures, got {type(table).__name__}")
        if "name" in table:
            raise CatalogueInvalid(f"models.{name}.name: a model's name is its table's name; remove this figure")
        tables[name] = {**tables.get(name, {}), **table}
        sources.setdefault(name, {}).update(dict.fromkeys(table, CONFIGURED))
    specs: dict[str, ModelSpec] = {}
    for name, table in tables.items():
        try:
            specs[name] = ModelSpec(name=name, **table)
        except ValidationError as exc:
            problems = "; ".join(_problem(name, error) for error in exc.errors()[:5])
            raise CatalogueInvalid(problems) from None
    return Catalogue(specs, sources)


def _problem(model: str, error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if not str(part).startswith("function-"))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        known = ", ".join(name for name in ModelSpec.model_fields if name != "name")
        message = f"not a figure of a model; known: {known}"
    return f"models.{model}{'.' + where if where else ''}: {message}"


@functools.lru_cache(maxsize=32)
def _cached(configured_json: str) -> Catalogue:
    return build_catalogue(json.loads(configured_json))


def catalogue_for(configured: Mapping[str, Any]) -> Catalogue:
    """`build_catalogue`, built once per distinct configuration (every stage asks for it)."""
    return _cached(json.dumps(configured, sort_keys=True, default=str))


def shipped_catalogue() -> Catalogue:
    """The shipped models alone: what a process with no settings of its own can know."""
    return catalogue_for({})
