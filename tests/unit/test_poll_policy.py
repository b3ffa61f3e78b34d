"""The poll policy as a pure function: 3 s for 30 s, then x1.5 to a cap per kind, jitter, deadline."""

from __future__ import annotations

import random

from config.catalogue import Kind
from config.settings import Settings
from workers.poll_policy import PollPolicy, next_poll_delay_s, policy_for

IMAGE = policy_for(Settings(), Kind.IMAGE)
VIDEO = policy_for(Settings(), Kind.VIDEO)


def test_every_three_seconds_during_the_first_thirty() -> None:
    """Within the first 30 s every delay is 3 s, give or take the 10 % jitter."""
    rng = random.Random(1)
    for elapsed in (0, 3, 15, 29.9):
        delay = next_poll_delay_s(IMAGE, elapsed_s=elapsed, previous_delay_s=3.0, remaining_s=600, rng=rng)
        assert 2.7 <= delay <= 3.3


def test_grows_by_half_then_caps_per_kind() -> None:
    """After 30 s each delay is 1.5x the last, up to 30 s for images and 60 s for video."""
    policy = PollPolicy(jitter=0.0)
    assert policy.delay_s(31, 3.0) == 4.5
    assert policy.delay_s(40, 4.5) == 6.75
    assert PollPolicy(cap_s=IMAGE.cap_s, jitter=0.0).delay_s(500, 29.0) == 30.0
    assert PollPolicy(cap_s=VIDEO.cap_s, jitter=0.0).delay_s(500, 59.0) == 60.0


def test_jitter_is_bounded_and_never_zero() -> None:
    """Jitter stays within +-10 % and a delay is never below half a second."""
    rng = random.Random(7)
    delays = [IMAGE.delay_s(100, 30.0, rng) for _ in range(500)]
    assert min(delays) >= 27.0 and max(delays) <= 33.0
    assert len(set(delays)) > 400  # really jittered
    assert PollPolicy(first_delay_s=0.1).delay_s(0, None) >= 0.5


def test_last_poll_lands_at_the_deadline() -> None:
    """A delay is cut to the time left before the job's deadline."""
    assert next_poll_delay_s(VIDEO, elapsed_s=300, previous_delay_s=60, remaining_s=4.0) == 4.0
    assert next_poll_delay_s(IMAGE, elapsed_s=300, previous_delay_s=30, remaining_s=-1.0) == 0.0


def test_policy_is_configurable_per_kind() -> None:
    """GENQ_POLL_* settings shape the policy; video and image caps differ."""
    settings = Settings(poll_first_delay_s=5.0, poll_image_cap_s=20.0, poll_video_cap_s=90.0)
    assert policy_for(settings, Kind.IMAGE).cap_s == 20.0 and policy_for(settings, Kind.VIDEO).cap_s == 90.0
    assert policy_for(settings, Kind.VIDEO).first_delay_s == 5.0
