"""What the service bills, as genq counts it: one `Bill` per task (or synchronous call) that SUCCEEDED.

A bill is recorded in the same atomic step as the job's SUCCEEDED answer (`workers/jobstore/lua/transition.lua`),
so it is counted exactly once however often the answer is delivered, and never lost to a crash between the
record and the count. It adds to the job (`billed_units`), its batch (per model) and the day (per account and
model, UTC days). Units are what the service bills by: images, or seconds of video (`TaskState.billed_units`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

#: How long a day's billed totals are kept in Redis: long enough to read back a month.
BILLED_DAY_TTL_S = 40 * 86400


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


def cost(units: float, price: float | None) -> float | None:
    """Money for `units` at `price` per unit; None without a price (genq invents none)."""
    return None if price is None else units * price
