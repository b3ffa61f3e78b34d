"""What the service bills, as genq counts it: one `Bill` per task (or synchronous call) that SUCCEEDED.

A bill is recorded in the same atomic step as the job's SUCCEEDED answer (`workers/jobstore/lua/transition.lua`),
so it is counted exactly once however often the answer is delivered, and never lost to a crash between the
record and the count. It adds to the job (`billed_units`), its batch (per model) and the day (per account and
model, UTC days). Units are what the service bills by: images, or seconds of video (`TaskState.billed_units`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from workers.requests import GenerationRequest

#: How long a day's billed totals are kept in Redis: long enough to read back a month.
BILLED_DAY_TTL_S = 40 * 86400
#: The code of a job whose synchronous call's answer was lost: it may have been billed (`workers/call.py`).
SYNC_OUTCOME_UNKNOWN = "SyncOutcomeUnknown"


def utc_day(ts: float) -> str:
    """The UTC day of an epoch time, as `YYYY-MM-DD` (a day's bills are kept under it)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Bill:
    """What one task that succeeded bills: `units` of `model` on `account`. `origin` names the task (or the
    synchronous call) billed, so that a record of the same answer twice counts it once."""

    units: float
    origin: str
    account: str
    model: str
    at: float  # when the answer was recorded (the day it counts in)

    @property
    def day(self) -> str:
        return utc_day(self.at)

    @property
    def scope(self) -> str:
        """The day's field for this bill: `{account}|{model}`."""
        return f"{self.account}|{self.model}"


def largest_bill(request: GenerationRequest) -> float:
    """The most a request can be billed, in its model's unit: every image it asks for, or the video's seconds
    (what admission reserves against a budget cap)."""
    return float(request.duration_s or request.n)


def cost(units: float, price: float | None) -> float | None:
    """Money for `units` at `price` per unit; None without a price (genq invents none)."""
    return None if price is None else units * price
