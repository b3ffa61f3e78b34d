"""Simulator profiles: built-ins, TOML files with a base, clear errors, and durations inside their bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.simulator.__main__ import parse_keys
from ops.simulator.engine import LONG_TASK_FACTOR, Engine, SimConfig
from ops.simulator.models import MODELS
from ops.simulator.profiles import PROFILES, Profile, ProfileError, Timing, load_profile


def test_builtin_profiles_exist_and_hostile_is_hostile() -> None:
    """realistic, demo, fast and hostile exist; hostile has faults, tight limits and burst protection."""
    assert set(PROFILES) == {"realistic", "demo", "fast", "hostile"}
    hostile = load_profile("hostile")
    assert hostile.faults and hostile.burst_protection and hostile.limits["wan2.5-t2i-preview"] == (2, 2)
    with pytest.raises(ProfileError, match="unknown profile"):
        load_profile("gentle")


def test_profile_file_overrides_its_base(tmp_path: Path) -> None:
    """A TOML file starts from its base and overrides timing, limits and faults."""
    path = tmp_path / "mine.toml"
    path.write_text(
        'base = "fast"\ntime_scale = 2.0\n[timing]\nimage_s = [1, 2]\n'
        '[limits]\n"wan2.5-t2i-preview" = [3, 1]\n[faults]\ncreate_500 = 0.5\n'
    )
    profile = load_profile(path=path)
    assert profile.name == "mine" and profile.time_scale == 2.0 and profile.timing.image_s == (1.0, 2.0)
    assert profile.timing.video_s == PROFILES["fast"].timing.video_s
    assert profile.limits["wan2.5-t2i-preview"] == (3, 1) and profile.faults == {"create_500": 0.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[faults]\nnope = 1.0\n", r"unknown faults \['nope'\]; known: burst, cancel_429, .*create_500"),
        ("[faults]\ncreate_500 = 2\n", "create_500 needs a probability in"),
        ("[fault]\ncreate_500 = 1.0\n", r"unknown keys \['fault'\]"),
        ("[timing]\nimage_seconds = [1, 2]\n", r"unknown timing keys \['image_seconds'\]"),
        ('[limits]\n"wan9-t2i" = [1, 1]\n', r"unknown models in limits \['wan9-t2i'\]"),
        ('concurrency_mode = "throttled"\n', "concurrency_mode must be one of queue, throttle"),
        ("[timing]\nimage_s = [5, 1]\n", "low <= high"),
        ('[timing]\ndistribution = "normal"\n', "uniform or lognormal"),
    ],
)
def test_bad_profile_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    """Unknown keys, faults, models and modes, bad probabilities, inverted bounds and unknown distributions are
    named in the error."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profile(path=path)


@pytest.mark.parametrize("name", ["realistic", "demo", "fast", "hostile"])
def test_durations_stay_inside_the_profiles_bounds(name: str) -> None:
    """Every drawn image duration lies within the profile's bounds (plus prompt_extend), scaled."""
    profile = load_profile(name)
    engine = Engine(SimConfig(profile=profile, time_scale=0.5, seed=3))
    low, high = profile.timing.image_s
    draws = [engine.duration_s(MODELS["wan2.5-t2i-preview"], prompt_extend=False) for _ in range(2000)]
    assert low * 0.5 <= min(draws) and max(draws) <= high * 0.5
    extended = engine.duration_s(MODELS["wan2.5-t2i-preview"], prompt_extend=True)
    assert extended >= (low + profile.timing.prompt_extend_s) * 0.5


def test_keys_map_to_accounts() -> None:
    """`k1,k2` belong to account default; `a=k1|k2;b=k3` names accounts."""
    assert parse_keys("k1, k2") == {"k1": "default", "k2": "default"}
    assert parse_keys("a=k1|k2;b=k3") == {"k1": "a", "k2": "a", "k3": "b"}


def test_a_long_task_runs_ten_times_its_drawn_duration() -> None:
    """With every draw fixed at 2 s, a prompt carrying `sim:task_long` ends 20 s after it starts and an ordinary
    one 2 s after; the fault is counted once."""
    profile = Profile("fixed", Timing(image_s=(2.0, 2.0), prompt_extend_s=0.0))
    engine = Engine(SimConfig(profile=profile, seed=1))
    model = MODELS["wan2.5-t2i-preview"]
    created = {
        prompt: engine.create(
            key="k",
            account="a",
            model=model,
            body={"p": prompt},
            prompt=prompt,
            n=1,
            size="1024*1024",
            prompt_extend=False,
            now=100.0,
        )
        for prompt in ("a cat", "a dog sim:task_long")
    }
    ran = {prompt: (task.end or 0) - (task.scheduled or 0) for prompt, task in created.items()}
    assert ran == {"a cat": pytest.approx(2.0), "a dog sim:task_long": pytest.approx(2.0 * LONG_TASK_FACTOR)}
    assert engine.faults.fired == {"task_long": 1}
