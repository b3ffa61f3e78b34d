"""When to poll a task next: a pure function of how long it has run, so it is tested without a clock.

Default, from the service's own advice ("Going live"): every 3 s for the first 30 s, then growing by 1.5x
per poll up to a cap (30 s for images, 60 s for video), with bounded jitter so a fleet's polls do not
synchronise, and never past the job's deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from config.catalogue import Kind
from config.settings import Settings


@dataclass(frozen=True)
class PollPolicy:
    first_delay_s: float = 3.0
    fast_phase_s: float = 30.0
    growth: float = 1.5
    cap_s: float = 30.0
    jitter: float = 0.1  # +-10 %

    def delay_s(self, elapsed_s: float, previous_delay_s: float | None, rng: random.Random | None = None) -> float:
        """The delay before the next poll, given the time since submission and the last delay used."""
        if elapsed_s < self.fast_phase_s or previous_delay_s is None:
            base = self.first_delay_s
        else:
            base = min(self.cap_s, max(self.first_delay_s, previous_delay_s) * self.growth)
        spread = base * self.jitter
        return max(0.5, base + (rng or random).uniform(-spread, spread))


def policy_for(settings: Settings, kind: Kind) -> PollPolicy:
    """The configured policy for a model kind (`GENQ_POLL_*`)."""
    cap_s = settings.poll_video_cap_s if kind is Kind.VIDEO else settings.poll_image_cap_s
    return PollPolicy(
        first_delay_s=settings.poll_first_delay_s,
        fast_phase_s=settings.poll_fast_phase_s,
        growth=settings.poll_growth,
        cap_s=cap_s,
    )


def next_poll_delay_s(
    policy: PollPolicy,
    *,
    elapsed_s: float,
    previous_delay_s: float | None,
    remaining_s: float,
    rng: random.Random | None = None,
) -> float:
    """The policy's delay, cut so the last poll lands at the deadline rather than after it."""
    delay = policy.delay_s(elapsed_s, previous_delay_s, rng)
    return max(0.0, min(delay, remaining_s))
