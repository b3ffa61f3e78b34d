"""DashScope accounts: the quota scopes genq spreads its work over.

An account is one root account of Model Studio in one region: its API keys (all of them share its limits,
and genq spreads its creates over them), its base URL, and its limits per model (the catalogue's documented
figures unless overridden). With no `accounts` configured, genq has one account made of the top-level
settings (`account`, `DASHSCOPE_API_KEY`, `region`, `dashscope_base_url`).

In a TOML config file:

    [[accounts]]
    name = "main"
    region = "singapore"
    api_keys = ["sk-...", "sk-..."]
    concurrency_mode = "queue"        # the service queues excess tasks in PENDING ("throttle": it 429s)
    server_queue_depth = 5            # tasks kept queued upstream per model beyond its concurrency
    query_qps = 20
    [accounts.limits]                 # model = [submits per second, tasks at once]
    "wan2.5-t2i-preview" = [5, 5]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from config.catalogue import Catalogue, ModelSpec

#: Base URLs per region (dashscope-api.md, "Endpoints"). Keys are region-specific.
REGION_BASE_URLS = {
    "beijing": "https://dashscope.aliyuncs.com/api/v1",
    "singapore": "https://dashscope-intl.aliyuncs.com/api/v1",
    "virginia": "https://dashscope-us.aliyuncs.com/api/v1",
}


def base_url_for(region: str, base_url: str | None, *, override_hint: str) -> str:
    """`base_url` if given, else the region's; an unknown region names the known ones and the override."""
    if base_url:
        return base_url.rstrip("/")
    try:
        return REGION_BASE_URLS[region]
    except KeyError:
        raise ValueError(
            f"unknown region {region!r}: use one of {', '.join(REGION_BASE_URLS)} or set {override_hint}"
        ) from None


class AccountSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    api_keys: tuple[SecretStr, ...] = ()
    region: str = "singapore"
    base_url: str | None = None
    workspace: str | None = None
    concurrency_mode: Literal["queue", "throttle"] = "queue"
    server_queue_depth: int | None = Field(
        None, ge=0, description="None: as deep as the model's concurrency in queue mode, 0 in throttle mode."
    )
    query_qps: float = Field(20.0, gt=0)
    limits: dict[str, tuple[float, int]] = Field(default_factory=dict)
    models: tuple[str, ...] = Field((), description="Models this account serves; empty: all of them.")
    daily_cap_units: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Most billed units (images, seconds of video) per UTC day."
    )
    daily_cap_money: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Most money per UTC day, at the configured prices."
    )

    @field_validator("limits")
    @classmethod
    def _positive_limits(cls, limits: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
        # Whether each names a known model is checked with the catalogue in force (`Settings`).
        for model, (rate, slots) in limits.items():
            if not (rate > 0 and slots >= 1) or rate == float("inf"):
                raise ValueError(f"limits for {model}: submits per second must be > 0 and tasks at once >= 1")
        return limits

    @property
    def resolved_base_url(self) -> str:
        return base_url_for(self.region, self.base_url, override_hint=f"account {self.name}'s base_url")

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def limits_for(self, spec: ModelSpec) -> ScopeLimits:
        """The scope's limits: this account's own for the model, else the model's. A synchronous model has no
        queue upstream: a call beyond its concurrency would hold a connection the service does not serve."""
        rate, concurrent = self.limits.get(spec.name, (spec.submit_rate_per_s, spec.max_concurrent))
        depth = self.server_queue_depth
        if depth is None:
            depth = concurrent if self.concurrency_mode == "queue" else 0
        if spec.synchronous:
            depth = 0
        return ScopeLimits(submit_rate_per_s=float(rate), max_concurrent=int(concurrent), server_queue_depth=depth)


class ScopeLimits(BaseModel):
    """The limits of one (account, model) scope."""

    model_config = ConfigDict(frozen=True)

    submit_rate_per_s: float
    max_concurrent: int
    server_queue_depth: int

    @property
    def slot_limit(self) -> int:
        """Jobs that may hold a slot at once: the tasks the service runs, plus those it keeps queued."""
        return self.max_concurrent + self.server_queue_depth


def slot_limits(accounts: Iterable[AccountSettings], catalogue: Catalogue) -> dict[str, dict[str, int]]:
    """Account -> model -> the scope's slot limit (tasks at once plus the server-side queue), for every model
    each account serves: the limits in force, as admission applies them (`workers/admission.py`)."""
    return {a.name: {m: a.limits_for(catalogue.spec(m)).slot_limit for m in catalogue if a.serves(m)} for a in accounts}
