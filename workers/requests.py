"""A generation request, and its validation against the model catalogue before anything is sent.

Every producer (CSV, request stream, schedule) turns its input into a `RequestInput` of plain strings and
optional values, then calls `validate_request`, which either returns a canonical `GenerationRequest` or
raises `RequestInvalid` naming the field and the rule it breaks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from config.catalogue import (
    ASPECT_MAX,
    ASPECT_MIN,
    CATALOGUE,
    N_MAX,
    N_MIN,
    NEGATIVE_PROMPT_MAX_CHARS,
    SEED_MAX,
    SEED_MIN,
    SIDE_MAX,
    SIDE_MIN,
    TOTAL_PIXELS_MAX,
    TOTAL_PIXELS_MIN,
    Kind,
    ModelSpec,
    SizeRule,
)
from workers.errors import RequestInvalid

_SIZE = re.compile(r"^(\d{2,5})\*(\d{2,5})$")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


@dataclass(frozen=True)
class GenerationRequest:
    """A request that passed validation, with every default filled in (n is always explicit: it is billed)."""

    model: str
    prompt: str
    negative_prompt: str = ""
    size: str = ""
    n: int = 1
    seed: int | None = None
    prompt_extend: bool = True
    watermark: bool = False
    duration_s: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def canonical_json(self) -> str:
        """The request as stable JSON: equal requests give equal strings (used for idempotency keys)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        return cls(**data)


@dataclass
class RequestInput:
    """Raw fields as a producer read them; `None` or "" means "not given, use the default"."""

    prompt: str | None
    model: str | None = None
    negative_prompt: str | None = None
    size: str | None = None
    n: str | int | None = None
    seed: str | int | None = None
    prompt_extend: str | bool | None = None
    watermark: str | bool | None = None
    duration: str | int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _as_int(name: str, value: str | int) -> int:
    if isinstance(value, bool):
        raise RequestInvalid(name, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise RequestInvalid(name, f"must be an integer, got {text!r}")
    return int(text)


def _as_bool(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RequestInvalid(name, f"must be true or false, got {value!r}")


def check_size(spec: ModelSpec, size: str) -> None:
    """Raise `RequestInvalid` unless `size` is `W*H` and fits the model's size rule."""
    match = _SIZE.match(size)
    if not match:
        hint = " (use '*' between width and height, not 'x')" if "x" in size.lower() else ""
        raise RequestInvalid("size", f"must be W*H such as 1280*1280, got {size!r}{hint}")
    width, height = int(match[1]), int(match[2])
    if spec.size_rule is SizeRule.FIXED:
        if size not in spec.fixed_sizes:
            raise RequestInvalid("size", f"{spec.name} accepts only {', '.join(spec.fixed_sizes)}; got {size}")
    elif spec.size_rule is SizeRule.PER_SIDE:
        if not (SIDE_MIN <= width <= SIDE_MAX and SIDE_MIN <= height <= SIDE_MAX):
            raise RequestInvalid(
                "size", f"{spec.name}: width and height must each be {SIDE_MIN}-{SIDE_MAX} px; got {size}"
            )
    else:
        pixels = width * height
        if not TOTAL_PIXELS_MIN <= pixels <= TOTAL_PIXELS_MAX:
            raise RequestInvalid(
                "size",
                f"{spec.name}: total pixels must be between 768*768 and 1440*1440 "
                f"({TOTAL_PIXELS_MIN:,}-{TOTAL_PIXELS_MAX:,}); {size} has {pixels:,}",
            )
        if not ASPECT_MIN <= width / height <= ASPECT_MAX:
            raise RequestInvalid("size", f"{spec.name}: aspect ratio must be within 1:4 and 4:1; got {size}")


def validate_request(raw: RequestInput, *, default_model: str) -> GenerationRequest:
    """The canonical request, or `RequestInvalid` naming the first field that breaks a rule."""
    model = raw.model.strip() if _given(raw.model) and raw.model else default_model
    spec = CATALOGUE.get(model)
    if spec is None:
        raise RequestInvalid("model", f"unknown model {model!r}; known models: {', '.join(sorted(CATALOGUE))}")

    prompt = raw.prompt.strip() if raw.prompt else ""
    if not prompt:
        raise RequestInvalid("prompt", "is required and must not be empty")
    if len(prompt) > spec.prompt_max_chars:
        raise RequestInvalid(
            "prompt", f"{len(prompt)} characters is over {spec.name}'s limit of {spec.prompt_max_chars}"
        )
    negative = raw.negative_prompt.strip() if raw.negative_prompt else ""
    if len(negative) > NEGATIVE_PROMPT_MAX_CHARS:
        raise RequestInvalid(
            "negative_prompt", f"{len(negative)} characters is over the limit of {NEGATIVE_PROMPT_MAX_CHARS}"
        )

    size = raw.size.strip() if _given(raw.size) and raw.size else spec.default_size
    check_size(spec, size)

    n = _as_int("n", raw.n) if _given(raw.n) and raw.n is not None else 1
    if not N_MIN <= n <= spec.max_n:
        limit = f"{N_MIN}-{spec.max_n}" if spec.max_n < N_MAX else f"{N_MIN}-{N_MAX}"
        raise RequestInvalid("n", f"must be {limit} for {spec.name}; got {n}")

    seed = _as_int("seed", raw.seed) if _given(raw.seed) and raw.seed is not None else None
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise RequestInvalid("seed", f"must be {SEED_MIN}-{SEED_MAX}; got {seed}")

    duration: int | None = None
    if spec.kind is Kind.VIDEO:
        duration = (
            _as_int("duration", raw.duration)
            if _given(raw.duration) and raw.duration is not None
            else spec.default_duration_s
        )
        if duration not in spec.durations_s:
            allowed = ", ".join(str(d) for d in spec.durations_s)
            raise RequestInvalid("duration", f"{spec.name} accepts {allowed} seconds; got {duration}")
    elif _given(raw.duration):
        raise RequestInvalid("duration", f"applies to video models only; {spec.name} makes images")

    return GenerationRequest(
        model=spec.name,
        prompt=prompt,
        negative_prompt=negative,
        size=size,
        n=n,
        seed=seed,
        prompt_extend=(
            _as_bool("prompt_extend", raw.prompt_extend)
            if _given(raw.prompt_extend) and raw.prompt_extend is not None
            else True
        ),
        watermark=(
            _as_bool("watermark", raw.watermark) if _given(raw.watermark) and raw.watermark is not None else False
        ),
        duration_s=duration,
        metadata=dict(raw.metadata),
    )
