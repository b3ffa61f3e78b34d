"""The one typed settings object, read once from the environment and an optional TOML file.

Sources, highest priority first: keyword arguments, `GENQ_*` environment variables (plus the standard
`DASHSCOPE_API_KEY`; a variable set to the empty string counts as unset), secrets files (one file per setting,
named like its variable, in `GENQ_SECRETS_DIR` or else `/run/secrets` when it exists: Docker's and Podman's
secrets), the TOML file named by `GENQ_CONFIG` (or passed to `load_settings`), defaults.
Library code receives a `Settings` object and never reads `os.environ` itself.
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from redis.connection import parse_url

from config.accounts import REGION_BASE_URLS, AccountSettings, ScopeLimits, base_url_for
from config.catalogue import Catalogue, CatalogueInvalid, ModelSpec, catalogue_for
from config.logging import register_secrets
from config.schedules import ScheduleSettings

#: The documented OSS hosts that serve result URLs (dashscope-api.md, "Responses").
DOCUMENTED_RESULT_HOSTS = (
    *(
        f"dashscope-result-{r}.oss-cn-{city}.aliyuncs.com"
        for r, city in (
            ("bj", "beijing"),
            ("hz", "hangzhou"),
            ("sh", "shanghai"),
            ("wlcb", "wulanchabu"),
            ("zjk", "zhangjiakou"),
            ("sz", "shenzhen"),
            ("hy", "heyuan"),
            ("cd", "chengdu"),
            ("gz", "guangzhou"),
        )
    ),
    "dashscope-result-wlcb-acdr-1.oss-cn-wulanchabu-acdr-1.aliyuncs.com",
)


#: The Standard Webhooks form of a symmetric secret: this prefix, then the key in base64.
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret


def webhook_key(secret: str) -> bytes:
    """The HMAC-SHA256 key of a webhook secret: the bytes behind `whsec_<base64>` (the Standard Webhooks form),
    or the UTF-8 bytes of any other string. Raises ValueError, never quoting the secret."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        if not secret:
            raise ValueError("must not be empty")
        return secret.encode()
    body = secret[len(WEBHOOK_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a secret starting with whsec_ must continue in base64 (the Standard Webhooks form)") from None
    if not key:
        raise ValueError("the key after whsec_ is empty")
    return key


#: How long before the purge a webhook delivery must have been given up (events are collected within seconds).
WEBHOOK_PURGE_MARGIN_S = 3600.0
#: The longest retention genq accepts (ten years): beyond it a cut-off is no longer a date.
MAX_RETENTION_S = 10 * 365 * 86400.0
#: The shortest retention of finished jobs (`Settings.retention_s`, `genq purge`): a task and its result URLs live
#: 24 h upstream, and while they do a job's record is what keeps genq from paying twice for the same request (a
#: resent request or CSV row finds its job) and from adopting the job's task for another job; plus an hour.
MIN_RETENTION_S = 25 * 3600.0


class ConfigInvalid(ValueError):
    """The settings (file or environment) cannot be used: each problem named by its setting and the rule it
    breaks. Values are never quoted, since a setting may be a secret."""


#: Where container engines mount secrets; read when it exists and `GENQ_SECRETS_DIR` names no other folder.
CONTAINER_SECRETS_DIR = Path("/run/secrets")


def secrets_folder() -> Path | None:
    """The folder of secrets files: `GENQ_SECRETS_DIR` (which must exist), else `/run/secrets` if present."""
    named = os.environ.get("GENQ_SECRETS_DIR")
    if named:
        if not Path(named).is_dir():
            raise ConfigInvalid(f"GENQ_SECRETS_DIR {named} does not exist or is not a folder")
        return Path(named)
    return CONTAINER_SECRETS_DIR if CONTAINER_SECRETS_DIR.is_dir() else None


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # a malformed URL: the URL's own validation says so
        return True


def redis_url_with_password(url: str, password: str) -> str:
    """A Redis URL with `password` as its password (replacing any), its user name (an ACL user), host (IPv6
    brackets included), port and the rest unchanged. A `unix://` URL takes it as its query's `password`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("password="))
        query = "&".join(filter(None, (query, f"password={quote(password, safe='')}")))
        return f"unix://{parts.path}?{query}"
    user = quote(parts.username, safe="") if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


class Settings(BaseSettings):
    """Everything genq can be told. Field names map to `GENQ_<NAME>` environment variables."""

    # env_ignore_empty: `DASHSCOPE_API_KEY=` (as an env file template leaves it) means "no key", not an empty
    # bearer token sent to the real service.
    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore", frozen=True, env_ignore_empty=True)

    # --- services -------------------------------------------------------------------------------
    local: bool = Field(
        False,
        description="Run on this machine alone: a loopback Redis or S3 that does not answer is started for the "
        "command's duration (data under state_dir), and the DashScope simulator when no API key is set. Off (the "
        "production form): genq starts nothing, and a service that does not answer is an error naming it. "
        "`--local` on a command turns it on.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Job store and Celery broker. With `local`, a loopback URL that does not answer is started.",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Put into redis_url when that names no password: lets the password come from a secrets file "
        "(`genq_redis_password`) while the URL stays in plain configuration.",
    )
    s3_endpoint: str = Field(
        "127.0.0.1:9000", description="host:port of the S3 server. With `local`, a loopback one is started."
    )
    s3_access_key: SecretStr | None = Field(None, description="None: the local stack's own credentials.")
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = False
    s3_region: str | None = None
    bucket: str = "genq-results"

    # --- DashScope --------------------------------------------------------------------------------
    dashscope_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DASHSCOPE_API_KEY", "GENQ_DASHSCOPE_API_KEY"),
        description="Unset: genq runs against its local DashScope simulator.",
    )
    region: str = Field("singapore", description="One of " + ", ".join(REGION_BASE_URLS))
    dashscope_base_url: str | None = Field(None, description="Overrides the region's base URL.")
    account: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Name of the account made of the settings above.",
    )
    accounts: tuple[AccountSettings, ...] = Field(
        (), description="Several accounts (config/accounts.py); empty: the one account above."
    )
    result_hosts: tuple[str, ...] = Field(DOCUMENTED_RESULT_HOSTS, description="Hosts result URLs may be fetched from.")
    require_https_results: bool = True
    http_timeout_s: float = 30.0
    reconcile_clock_skew_s: float = Field(
        0.1, description="How far the service's clock may be from ours when a lost create is looked up."
    )

    # --- models (config/catalogue.py, config/models.toml) ---------------------------------------
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Models added to the shipped catalogue, or figures of shipped ones overridden: "
        '`[models."name"]` tables in the config file (docs/models.md). `genq models` shows what is in force.',
    )

    sync_call_timeout_s: float = Field(
        180.0,
        ge=10,
        le=1800,
        allow_inf_nan=False,
        description="How long a synchronous model's call waits for its answer (the whole generation). A call "
        "that times out may still have been billed, and is not made again on its own.",
    )
    call_lane_concurrency: int = Field(
        32, ge=1, le=1000, description="Synchronous calls one `genq worker --queues call` makes at once (threads)."
    )

    # --- jobs -------------------------------------------------------------------------------------
    default_model: str = "wan2.5-t2i-preview"
    image_deadline_s: float = 600.0
    video_deadline_s: float = 1800.0
    submit_max_attempts: int = Field(5, description="Transient create failures tolerated per job.")
    poll_max_errors: int = Field(
        8,
        description="Consecutive failed queries of a task before it is queried only every overdue_poll_s (the job "
        "fails only once the task's 24 h life upstream is over: until then it may still succeed and be billed).",
    )
    result_max_bytes: int = Field(2 * 1024**3, description="Largest result object fetched.")
    event_stream: str = "genq:events"
    event_stream_maxlen: int = 100_000
    result_url_life_s: float = Field(24 * 3600.0, description="How long result URLs live (the service: 24 h).")
    result_risk_margin_s: float = Field(3600.0, description="Alarm when a result's URL dies within this long.")
    finalize_retry_cap_s: float = Field(60.0, description="Longest wait between attempts to store a result.")
    account_pause_recheck_s: float = Field(60.0, description="How often jobs of a paused account look again.")
    prices: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Price per billed unit (an image, or a second of video) by model, in `price_currency`: for "
        "`genq batch --dry-run` estimates and the cost beside billed units. genq ships no prices.",
    )
    price_currency: str = Field("", max_length=8, description="The currency `prices` are in, as shown (e.g. CNY).")
    daily_cap_units: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="The single account's most billed units (images, seconds of video) per UTC day; configured "
        "accounts set their own (`daily_cap_units` of `[[accounts]]`).",
    )
    daily_cap_money: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="The same in money, at `prices` (the single account's)."
    )
    budget_on_cap: Literal["wait", "reject"] = Field(
        "wait",
        description="A job whose largest bill would cross a cap waits until the cap is raised or the day "
        "changes (`wait`), or ends `failed` with `BudgetCapReached` (`reject`).",
    )
    sweep_grace_s: float = Field(5.0, description="How overdue a job's next action must be to be re-sent.")
    unknown_confirm_s: float = Field(
        60.0, gt=0, description="How long a task younger than 24 h must keep answering UNKNOWN to be believed gone."
    )
    overdue_poll_s: float = Field(
        60.0, gt=0, description="How often a job past its deadline, whose task still runs upstream, is polled."
    )
    retention_s: float = Field(
        3 * 86400.0,
        description="How long a finished job, and a finished batch, stay in Redis after they ended; then the purge "
        "removes them (the bucket's manifests stay). At least 25 h: a task and its result URLs live 24 h upstream, "
        "and a job's records are what stops genq from paying twice for the same request during that time.",
        allow_inf_nan=False,
        le=MAX_RETENTION_S,
    )

    # --- quota (workers/quota/) -----------------------------------------------------------------
    slot_lease_s: float = Field(
        600.0, description="A slot lapses when nobody looked after its job for this long (a lost job)."
    )
    submit_rate_safety: float = Field(
        0.9, gt=0, le=1, description="Fraction of the documented submit rate genq uses (clock jitter margin)."
    )
    throttle_cooldown_s: float = Field(1.0, description="First pause of a scope after a 429; doubles per strike.")
    throttle_cooldown_cap_s: float = Field(30.0, description="Longest pause of a scope after 429s.")
    rate_increase_step: float = Field(
        0.05, description="Additive increase of a throttled scope's rate factor per second of successful creates."
    )
    slot_probe_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        allow_inf_nan=False,
        description="After a 429 cut a scope's slot count (an account without an upstream queue), it tries one "
        "more slot after this long without another.",
    )

    # --- the request stream (genq consume) --------------------------------------------------------
    request_stream: str = "genq:requests"
    request_group: str = "genq-consumers"
    request_batch: str = Field(
        "requests", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Batch of stream requests that name none."
    )
    request_max_waiting: int = Field(
        10_000, description="Stop reading requests while this many accepted jobs wait for quota."
    )
    request_claim_idle_s: float = Field(
        60.0, description="Take over a dead consumer's unanswered requests after this long."
    )

    # --- scheduled runs (producer/scheduled_runs.py) ---------------------------------------------------
    schedules: tuple[ScheduleSettings, ...] = Field(
        (), description="Scheduled runs of input CSVs (config/schedules.py)."
    )
    schedule_timezone: str = Field("UTC", description="Timezone of the schedules' crontabs and of their dates.")

    # --- poll policy (workers/poll_policy.py) and the task-list watcher (workers/watch.py) -------------
    poll_target: float = Field(
        0.25,
        ge=0.01,
        lt=1,
        description="A task is polled again when the chance that it ended since the last poll reaches this "
        "(from the learned run times); lower is sooner and costs more queries.",
    )
    poll_watched_target: float = Field(
        0.98, ge=0.01, lt=1, description="The same while the account's task list is watched (polls are a safety net)."
    )
    poll_min_delay_s: float = Field(
        0.5, ge=0.1, le=60, allow_inf_nan=False, description="Shortest wait between two polls of one task."
    )
    poll_image_cap_s: float = Field(
        30.0, ge=1, le=135, allow_inf_nan=False, description="Longest wait between two polls of an image task."
    )
    poll_video_cap_s: float = Field(
        60.0, ge=1, le=135, allow_inf_nan=False, description="Longest wait between two polls of a video task."
    )
    watch_task_list: bool = Field(
        True,
        description="Read each account's task list (GET /tasks) to notice ended tasks with one query for many; off: "
        "every task is polled on its own.",
    )
    watch_interval_s: float = Field(
        0.75,
        ge=0.2,
        le=30,
        description="How often the task list is read while a task of the account may have ended (the detection "
        "lag is at most about this).",
    )
    task_list_qps: float | None = Field(
        None,
        ge=0.1,
        le=1000,
        allow_inf_nan=False,
        description="The task list's own query budget per account, when the service gives it one; unset: it "
        "shares the account's query_qps with the task queries.",
    )

    # --- events -----------------------------------------------------------------------------------
    webhook_url: str | None = Field(None, description="Every event is also POSTed here, signed.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signing key (Standard Webhooks): `whsec_<base64>`, or any other string used as its bytes."
    )
    webhook_secret_previous: SecretStr | None = Field(
        None, description="The key being retired during a rotation: each delivery is signed with both."
    )
    webhook_timeout_s: float = Field(15.0, gt=0, description="Timeout of each phase of one webhook POST.")
    webhook_retry_first_s: float = Field(5.0, gt=0, description="Wait before the first retry of a failed delivery.")
    webhook_retry_cap_s: float = Field(3600.0, gt=0, description="Longest wait between two tries (doubling up to it).")
    webhook_give_up_s: float = Field(
        86400.0, gt=0, description="An event not delivered this long after its first try is dead-lettered."
    )
    webhook_max_attempts: int | None = Field(
        None, gt=0, description="Also dead-letter after this many tries (None: only the time above decides)."
    )
    webhook_concurrency: int = Field(8, gt=0, description="POSTs in flight at once per delivery task.")
    webhook_outbox_max: int = Field(
        100_000, gt=0, description="Events waiting for delivery at most; more are dead-lettered ('outbox full')."
    )
    webhook_dead_maxlen: int = Field(10_000, gt=0, description="The dead-letter stream is trimmed to about this.")

    # --- metrics --------------------------------------------------------------------------------
    metrics_port: int = Field(0, description="Serve Prometheus metrics from each worker on this port (0: off).")
    metrics_bind: str = Field("127.0.0.1", description="Address of the metrics endpoint (0.0.0.0 in a container).")

    # --- local stack ------------------------------------------------------------------------------
    state_dir: Path = Field(Path(".genq"), description="Data and logs of the local stack.")
    worker_concurrency: int = 4
    simulator_profile: str = Field("demo", description="Timing profile of the local simulator.")
    simulator_port: int = Field(0, description="0: a free port.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file") or os.environ.get("GENQ_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = secrets_folder()
        if secrets_dir is not None:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        if toml_file and not Path(str(toml_file)).is_file():
            raise ConfigInvalid(f"config file {toml_file} (GENQ_CONFIG) does not exist or is not a file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(str(toml_file))))
        return tuple(sources)

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown timezone {name!r} (an IANA name such as 'UTC' or 'Asia/Singapore')") from None
        return name

    @field_validator(
        "dashscope_api_key",
        "redis_password",
        "s3_access_key",
        "s3_secret_key",
        "webhook_secret",
        "webhook_secret_previous",
        mode="after",
    )
    @classmethod
    def _blank_secret_is_unset(cls, secret: SecretStr | None) -> SecretStr | None:
        """An empty or blank secret (an empty secrets file, `key = ""` in TOML) is no secret: never an empty
        bearer token sent to the service."""
        return secret if secret is not None and secret.get_secret_value().strip() else None

    @field_validator("retention_s")
    @classmethod
    def _retention_outlives_upstream_tasks(cls, seconds: float) -> float:
        if seconds < MIN_RETENTION_S:
            raise ValueError(
                f"must be at least {MIN_RETENTION_S:.0f} s (25 h): a task and its result URLs live 24 h upstream, and "
                "a finished job's record is what stops genq from paying twice for the same request during that time"
            )
        return seconds

    @field_validator("webhook_secret", "webhook_secret_previous")
    @classmethod
    def _usable_webhook_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            webhook_key(secret.get_secret_value())
        return secret

    @model_validator(mode="before")
    @classmethod
    def _password_into_url(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        password, url = data.get("redis_password"), data.get("redis_url", "redis://127.0.0.1:6379/0")
        if isinstance(password, SecretStr):
            password = password.get_secret_value()
        # Only a usable pair is merged; a wrong type is left for the fields' own validation to name.
        if password and isinstance(password, str) and isinstance(url, str) and not _has_password(url):
            data = {**data, "redis_url": redis_url_with_password(url, password)}
        return data

    @field_validator("redis_url")
    @classmethod
    def _usable_redis_url(cls, url: str) -> str:
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
            urlsplit(url).port  # noqa: B018 - a port that is not a number raises here, not at the first connection
        except ValueError as exc:
            raise ValueError(
                f"not a usable Redis URL ({exc}); the form is redis://[[user]:password@]host[:port][/db], "
                "rediss:// for TLS, or unix:///path"
            ) from None
        return url

    @model_validator(mode="after")
    def _webhooks_delivered_before_the_purge(self) -> Settings:
        # A batch's own webhook is read from its record at delivery: the record must outlive every try.
        if self.webhook_give_up_s > self.retention_s - WEBHOOK_PURGE_MARGIN_S:
            raise ValueError(
                "webhook_give_up_s must end at least 1 h before retention_s: a batch's own webhook (--webhook) is "
                "read from its record, which the purge removes after retention_s"
            )
        return self

    @model_validator(mode="after")
    def _poll_delays_in_order(self) -> Settings:
        cap_s = min(self.poll_image_cap_s, self.poll_video_cap_s)
        if self.poll_min_delay_s > cap_s:
            raise ValueError(
                f"poll_min_delay_s ({self.poll_min_delay_s:g}) must not be longer than the poll caps "
                f"(poll_image_cap_s, poll_video_cap_s: {cap_s:g})"
            )
        return self

    @model_validator(mode="after")
    def _usable_catalogue(self) -> Settings:
        """Every model whole, the default model among them, and every account's limits naming known models."""
        try:
            catalogue = self.catalogue
        except CatalogueInvalid as exc:
            raise ValueError(str(exc)) from None
        if self.default_model not in catalogue:
            raise ValueError(f"default_model: unknown model {self.default_model!r}; known: {', '.join(catalogue)}")
        for account in self.resolved_accounts():
            for model in (*account.limits, *account.models):
                if model not in catalogue:
                    raise ValueError(f"account {account.name}: unknown model {model!r}; known: {', '.join(catalogue)}")
        return self

    @model_validator(mode="after")
    def _known_region(self) -> Settings:
        _ = self.base_url  # an unknown region without a base URL is refused now, naming the known ones
        for account in self.resolved_accounts():  # and every account as the workers will build it
            _ = account.resolved_base_url
        return self

    # --- derived ----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return base_url_for(self.region, self.dashscope_base_url, override_hint="GENQ_DASHSCOPE_BASE_URL")

    @property
    def webhook_keys(self) -> tuple[bytes, ...]:
        """The keys every webhook delivery is signed with: the current one first, then the one being retired."""
        secrets = (self.webhook_secret, self.webhook_secret_previous)
        return tuple(webhook_key(s.get_secret_value()) for s in secrets if s is not None)

    @property
    def uses_simulator(self) -> bool:
        return self.dashscope_api_key is None and not self.accounts

    def resolved_accounts(self) -> tuple[AccountSettings, ...]:
        """The configured accounts, or the one made of the top-level settings."""
        if self.accounts:
            return self.accounts
        keys = (self.dashscope_api_key,) if self.dashscope_api_key is not None else ()
        return (
            AccountSettings(
                name=self.account,
                api_keys=keys,
                region=self.region,
                base_url=self.dashscope_base_url,
                daily_cap_units=self.daily_cap_units,
                daily_cap_money=self.daily_cap_money,
            ),
        )

    @property
    def catalogue(self) -> Catalogue:
        """The models in force: the shipped ones with `models` merged over them (built once per configuration)."""
        return catalogue_for(self.models)

    def spec(self, model: str) -> ModelSpec:
        """A model of the catalogue in force; `KeyError` names the known ones."""
        return self.catalogue.spec(model)

    def limits(self, account: str, model: str) -> ScopeLimits:
        """The limits of one (account, model) scope: the account's own, else the model's."""
        return self.account_settings(account).limits_for(self.spec(model))

    def account_settings(self, name: str) -> AccountSettings:
        for account in self.resolved_accounts():
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.resolved_accounts())
        raise KeyError(f"unknown account {name!r}; configured: {known}")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once. `config_file` wins over `GENQ_CONFIG`. Their secrets are registered for
    redaction from every log line. Raises `ConfigInvalid` (and nothing else) for settings that cannot be used."""
    source = config_file or os.environ.get("GENQ_CONFIG") or "the environment"
    folder = secrets_folder()
    where = f"{source} or the secrets folder {folder}" if folder else str(source)
    try:
        settings = _read(config_file, **overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors()[:10])
        more = f" (and {exc.error_count() - 10} more)" if exc.error_count() > 10 else ""
        raise ConfigInvalid(f"invalid settings in {where}: {problems}{more}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"config file {source} is not valid TOML: {exc}") from None
    except SettingsError as exc:  # an environment variable that should hold JSON (GENQ_PRICES, ...) does not
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        raise ConfigInvalid(f"invalid settings in {where}: {str(exc).split(' from source')[0]}{cause}") from None
    except OSError as exc:  # the config file, or a secrets file (mounted with modes the process cannot read)
        raise ConfigInvalid(f"cannot read {exc.filename or source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigInvalid(f"a file of {where} is not UTF-8 text") from None
    account_keys = [key for account in settings.accounts for key in account.api_keys]
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    in_url = urlsplit(settings.redis_url).password if not settings.redis_url.startswith("unix://") else None
    register_secrets(
        in_url,
        quote(in_url, safe="") if in_url else None,
        settings.dashscope_api_key,
        settings.redis_password,
        quote(password, safe="") if password else None,  # as it stands in the URL
        settings.s3_secret_key,
        settings.webhook_secret,
        settings.webhook_secret_previous,
        *account_keys,
    )
    return settings


def _problem(error: Any) -> str:
    """One validation error as `setting.path: what is wrong`, without the value (it may be a secret)."""
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message  # a check of the whole names its own field


def _read(config_file: Path | None, **overrides: Any) -> Settings:
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise ConfigInvalid(f"config file {config_file} does not exist")
    from_file = type(
        "Settings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})},
    )
    return cast(Settings, from_file(**overrides))
