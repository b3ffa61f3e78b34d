"""Simulator profiles: how long tasks take, which limits apply, which faults fire and how often.

Built-ins: `realistic` (durations as documented), `demo` (seconds, for a person watching), `fast` (for tests)
and `hostile` (faults on, tight limits, burst protection). A TOML file can start from any of them:

    base = "realistic"            # optional, default "realistic"
    time_scale = 0.1
    concurrency_mode = "queue"    # or "throttle"
    burst_protection = true
    [timing]
    image_s = [10, 120]           # low, high seconds
    video_s = [60, 300]
    distribution = "lognormal"    # or "uniform"
    prompt_extend_s = 3.5
    [limits]                      # model = [submits per second, tasks at once]
    "wan2.5-t2i-preview" = [5, 5]
    [faults]                      # fault name = probability per request / task (see faults.py)
    create_500 = 0.02

A lognormal draw has its median at the geometric mean of [low, high] and sigma = ln(high / low) / 4, and is
clipped to the bounds (which lie 2 sigma either side of the median). So "median m, sigma s" is
`image_s = [m * exp(-2 s), m * exp(2 s)]`: median 20 s, sigma 0.3 is `[10.98, 36.44]` (20 e^-0.6, 20 e^0.6).

An unknown key, model, fault or concurrency mode is refused with a `ProfileError` naming it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ops.simulator.faults import check_probabilities
from ops.simulator.models import MODELS


@dataclass(frozen=True)
class Timing:
    image_s: tuple[float, float] = (10.0, 120.0)
    video_s: tuple[float, float] = (60.0, 300.0)
    prompt_extend_s: float = 3.5
    distribution: str = "uniform"  # "uniform" | "lognormal" (median at the geometric mean, 2 sigma to a bound)


@dataclass(frozen=True)
class Profile:
    name: str
    timing: Timing = Timing()
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (submit/s, tasks at once)
    faults: dict[str, float] = field(default_factory=dict)  # fault -> probability
    concurrency_mode: str = "queue"
    burst_protection: bool = False
    time_scale: float = 1.0


_TIGHT = {m: (2, 2) for m in ("wan2.6-t2i", "wan2.5-t2i-preview", "wan2.6-t2v", "wan2.5-t2v-preview")}

PROFILES: dict[str, Profile] = {
    "realistic": Profile("realistic", Timing(distribution="lognormal")),
    "demo": Profile("demo", Timing(image_s=(2.0, 6.0), video_s=(5.0, 10.0), prompt_extend_s=1.0)),
    "fast": Profile("fast", Timing(image_s=(0.3, 1.0), video_s=(0.5, 1.5), prompt_extend_s=0.1)),
    "hostile": Profile(
        "hostile",
        Timing(image_s=(1.0, 6.0), video_s=(2.0, 10.0), prompt_extend_s=0.5, distribution="lognormal"),
        limits=_TIGHT,
        faults={
            "create_500": 0.03,
            "create_503": 0.03,
            "create_drop_after": 0.01,
            "create_malformed": 0.01,
            "create_slow": 0.005,
            "create_hang": 0.005,
            "burst": 0.02,
            "query_500": 0.02,
            "query_503": 0.02,
            "query_drop": 0.01,
            "query_malformed": 0.01,
            "query_slow": 0.005,
            "task_failed": 0.03,
            "task_timeout": 0.02,
            "task_inspection": 0.01,
            "task_partial": 0.05,
            "task_expire": 0.01,
            "task_unknown_flap": 0.02,
            "task_long": 0.02,
            "url_fail_once": 0.05,
            "url_unparseable": 0.005,
        },
        burst_protection=True,
    ),
}


CONCURRENCY_MODES = ("queue", "throttle")
_FILE_KEYS = frozenset({"base", "time_scale", "concurrency_mode", "burst_protection", "timing", "limits", "faults"})
_TIMING_KEYS = frozenset({"image_s", "video_s", "distribution", "prompt_extend_s"})


class ProfileError(ValueError):
    pass


def check_limits(limits: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """model -> (submits per second, tasks at once); `ValueError` naming an unknown model or a bad pair."""
    if not isinstance(limits, dict):
        raise ValueError(f"limits must map models to [submits per second, tasks at once], got {limits!r}")
    unknown = set(limits) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models in limits {sorted(unknown)}; known: {', '.join(sorted(MODELS))}")
    checked = {}
    for model, value in limits.items():
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)):
            raise ValueError(f"limits of {model} must be [submits per second, tasks at once], got {value!r}")
        checked[model] = (value[0], value[1])
    return checked


def check_concurrency_mode(mode: str) -> str:
    if mode not in CONCURRENCY_MODES:
        raise ValueError(f"concurrency_mode must be one of {', '.join(CONCURRENCY_MODES)}, got {mode!r}")
    return mode


def _refuse_unknown(where: str, keys: Any, known: frozenset[str]) -> None:
    unknown = set(keys) - known
    if unknown:
        raise ProfileError(f"unknown {where} {sorted(unknown)}; known: {', '.join(sorted(known))}")


def _pair(name: str, value: Any) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
        raise ProfileError(f"{name} must be [low, high] in seconds, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 <= low <= high:
        raise ProfileError(f"{name} must have 0 <= low <= high, got {value!r}")
    return low, high


def load_profile(name: str = "realistic", path: Path | None = None) -> Profile:
    """A built-in profile, or one read from a TOML file (which may name a built-in `base`)."""
    if path is None:
        if name not in PROFILES:
            raise ProfileError(f"unknown profile {name!r}; built-ins: {', '.join(sorted(PROFILES))}")
        return PROFILES[name]
    data = tomllib.loads(path.read_text())
    _refuse_unknown("keys", data, _FILE_KEYS)
    base = load_profile(str(data.get("base", name)))
    timing_data = dict(data.get("timing", {}))
    _refuse_unknown("timing keys", timing_data, _TIMING_KEYS)
    updates: dict[str, Any] = {k: _pair(k, v) for k, v in timing_data.items() if k in {"image_s", "video_s"}}
    updates.update({k: timing_data[k] for k in ("prompt_extend_s", "distribution") if k in timing_data})
    if updates.get("distribution", "uniform") not in {"uniform", "lognormal"}:
        raise ProfileError(f"timing.distribution must be uniform or lognormal, got {updates['distribution']!r}")
    timing = replace(base.timing, **updates)
    try:
        faults = check_probabilities(data.get("faults", {}))
        limits = check_limits(data.get("limits", {}))
        concurrency_mode = check_concurrency_mode(data.get("concurrency_mode", base.concurrency_mode))
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    return replace(
        base,
        name=path.stem,
        timing=timing,
        limits={**base.limits, **limits},
        faults={**base.faults, **faults},
        concurrency_mode=concurrency_mode,
        burst_protection=data.get("burst_protection", base.burst_protection),
        time_scale=float(data.get("time_scale", base.time_scale)),
    )
