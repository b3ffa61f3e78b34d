"""Scheduled runs: each picks up the CSV files in a folder or a bucket prefix and runs each as one batch.

In a TOML config file:

    schedule_timezone = "Asia/Singapore"   # the crontabs' timezone (one for all)

    [[schedules]]
    name = "nightly"
    cron = "0 2 * * *"                     # minute hour day-of-month month day-of-week
    source = "/data/inbox"                 # a folder the workers see, or "s3://bucket/prefix/"
    priority = 2                           # below interactive batches (default 5)
"""

from __future__ import annotations

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, Field, field_validator

_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


class ScheduleSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,23}$")
    cron: str
    source: str
    priority: int = Field(2, ge=0, le=9)
    model: str | None = Field(None, description="Model of rows that name none (default: GENQ_DEFAULT_MODEL).")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day-of-month month day-of-week), got {cron!r}")
        try:  # each field as Celery beat will read it, so a bad one fails here, not when beat starts
            crontab(**dict(zip(_FIELDS, cron.split(), strict=True)))
        except Exception as exc:  # celery raises ValueError, and other types for some malformed fields
            raise ValueError(f"cron {cron!r} is not a valid crontab: {exc}") from None
        return cron

    def crontab_fields(self) -> dict[str, str]:
        minute, hour, day_of_month, month_of_year, day_of_week = self.cron.split()
        return {
            "minute": minute,
            "hour": hour,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
            "day_of_week": day_of_week,
        }
