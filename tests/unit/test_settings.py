"""Settings: environment over TOML file over defaults; region URLs; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.logging import redact
from config.settings import REGION_BASE_URLS, ConfigInvalid, load_settings


def test_toml_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values come from the TOML file unless a GENQ_* variable sets them too."""
    config = tmp_path / "genq.toml"
    config.write_text('bucket = "from-file"\nregion = "beijing"\nworker_concurrency = 7\n')
    monkeypatch.setenv("GENQ_WORKER_CONCURRENCY", "2")
    settings = load_settings(config)
    assert settings.bucket == "from-file" and settings.worker_concurrency == 2
    assert settings.base_url == REGION_BASE_URLS["beijing"]


def test_api_key_is_read_from_the_standard_variable_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """DASHSCOPE_API_KEY is picked up, and neither repr nor a JSON dump of the settings shows it."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret-value-1234567890")
    settings = load_settings()
    assert not settings.uses_simulator
    assert "sk-secret" not in repr(settings) and "sk-secret" not in settings.model_dump_json()


def test_unknown_region_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown region names the known ones."""
    monkeypatch.setenv("GENQ_REGION", "mars")
    with pytest.raises(ValueError, match="singapore"):
        _ = load_settings().base_url


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such."""
    with pytest.raises(ConfigInvalid, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_accounts_from_toml_with_limits_keys_and_queue_depth(tmp_path: Path) -> None:
    """Two accounts in TOML: overrides and catalogue limits resolve per model, the queue depth follows the
    concurrency mode, and the keys are secrets (masked in every log line from then on)."""
    config = tmp_path / "genq.toml"
    config.write_text(
        '[[accounts]]\nname = "main"\napi_keys = ["main-key-aaaaaaaa", "main-key-bbbbbbbb"]\n'
        '[accounts.limits]\n"wan2.5-t2i-preview" = [3, 4]\n'
        '[[accounts]]\nname = "cn"\nregion = "beijing"\napi_keys = ["cn-key-cccccccc"]\nconcurrency_mode = "throttle"\n'
        'models = ["wan2.6-t2i"]\n'
    )
    settings = load_settings(config)
    main, cn = settings.resolved_accounts()
    # 4 at once, and as many queued upstream
    assert settings.limits(main.name, "wan2.5-t2i-preview").slot_limit == 4 + 4
    assert settings.limits("main", "wan2.2-t2i-flash").submit_rate_per_s == 2  # the catalogue's figure
    assert settings.limits(cn.name, "wan2.6-t2i").slot_limit == 5 and not cn.serves("wan2.5-t2i-preview")
    assert cn.resolved_base_url == REGION_BASE_URLS["beijing"]
    assert "main-key" not in repr(settings)
    assert redact(None, "info", {"event": "key main-key-bbbbbbbb used"}) == {"event": "key *** used"}


def test_accounts_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_ACCOUNTS holds the same list as JSON; without it, one account is made of the top-level settings."""
    monkeypatch.setenv("GENQ_ACCOUNTS", '[{"name": "a", "api_keys": ["k-aaaaaaaa"], "query_qps": 10}]')
    assert [a.name for a in load_settings().resolved_accounts()] == ["a"]
    monkeypatch.delenv("GENQ_ACCOUNTS")
    monkeypatch.setenv("GENQ_ACCOUNT", "solo")
    solo_settings = load_settings()
    (solo,) = solo_settings.resolved_accounts()
    assert solo.name == "solo" and solo_settings.limits("solo", "wan2.6-t2i").submit_rate_per_s == 5


def test_an_override_for_an_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    """An account's limit for a model the catalogue in force does not know is refused at start with the account
    and the list of known models; one for a model the config itself adds is accepted."""
    config = tmp_path / "genq.toml"
    config.write_text('[[accounts]]\nname = "x"\n[accounts.limits]\n"dall-e-3" = [1, 1]\n')
    with pytest.raises(ConfigInvalid, match="account x: unknown model 'dall-e-3'; known: qwen-image, "):
        load_settings(config)
    config.write_text(config.read_text() + DALL_E)
    assert load_settings(config).limits("x", "dall-e-3").max_concurrent == 1


def test_an_empty_api_key_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`DASHSCOPE_API_KEY=` (as .env.example leaves it) means no key, never an empty bearer token."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "")
    monkeypatch.setenv("GENQ_BUCKET", "")
    settings = load_settings()
    assert settings.dashscope_api_key is None and settings.uses_simulator
    assert settings.bucket == "genq-results"


def test_secrets_come_from_files_in_the_secrets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named like a setting's variable in GENQ_SECRETS_DIR gives its value (trailing newline dropped);
    the environment still wins over it."""
    (tmp_path / "dashscope_api_key").write_text("sk-from-a-file\n")
    (tmp_path / "genq_s3_secret_key").write_text("s3-secret-from-a-file")
    monkeypatch.setenv("GENQ_SECRETS_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.dashscope_api_key is not None
    assert settings.dashscope_api_key.get_secret_value() == "sk-from-a-file"
    assert settings.s3_secret_key is not None and settings.s3_secret_key.get_secret_value() == "s3-secret-from-a-file"
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-from-the-environment")
    assert load_settings().dashscope_api_key.get_secret_value() == "sk-from-the-environment"  # type: ignore[union-attr]


def test_a_missing_secrets_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_SECRETS_DIR naming no folder is refused with its name, not ignored."""
    monkeypatch.setenv("GENQ_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigInvalid, match="GENQ_SECRETS_DIR"):
        load_settings()


def test_the_redis_password_goes_into_a_url_that_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_REDIS_PASSWORD is put into GENQ_REDIS_URL (quoted) when the URL has no password, never over one,
    and is masked in log lines."""
    monkeypatch.setenv("GENQ_REDIS_URL", "redis://redis:6379/2")
    monkeypatch.setenv("GENQ_REDIS_PASSWORD", "p@ss/word")
    settings = load_settings()
    assert settings.redis_url == "redis://:p%40ss%2Fword@redis:6379/2"
    line = redact(None, "info", {"event": "to redis://:p%40ss%2Fword@redis with p@ss/word"})["event"]
    assert "p@ss/word" not in line and "p%40ss%2Fword" not in line
    monkeypatch.setenv("GENQ_REDIS_URL", "redis://:own@redis:6379/2")
    assert load_settings().redis_url == "redis://:own@redis:6379/2"


def test_a_blank_secret_from_any_source_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty secrets file or `dashscope_api_key = ""` in TOML gives no key (never an empty bearer token), and
    blank S3 keys are no keys."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "dashscope_api_key").write_text("\n")
    monkeypatch.setenv("GENQ_SECRETS_DIR", str(tmp_path / "secrets"))
    assert load_settings().dashscope_api_key is None
    monkeypatch.delenv("GENQ_SECRETS_DIR")
    config = tmp_path / "genq.toml"
    config.write_text('dashscope_api_key = ""\ns3_access_key = " "\nredis_password = ""\n')
    settings = load_settings(config)
    assert settings.dashscope_api_key is None and settings.s3_access_key is None and settings.uses_simulator
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "merged"),
    [
        ("redis://genq@10.0.0.1:6379/0", "redis://genq:p%20w@10.0.0.1:6379/0"),
        ("redis://[::1]:6379/0", "redis://:p%20w@[::1]:6379/0"),
        ("rediss://cache.internal:6380/1", "rediss://:p%20w@cache.internal:6380/1"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2&password=p%20w"),
    ],
)
def test_the_redis_password_keeps_the_rest_of_the_url(url: str, merged: str) -> None:
    """Merging the password keeps an ACL user name, IPv6 brackets, TLS and unix sockets as they were."""
    assert load_settings(redis_url=url, redis_password="p w").redis_url == merged


@pytest.mark.parametrize("url", ["redis://host:port/0", "http://host:6379/0", "redis://[::1/0"])
def test_an_unusable_redis_url_is_a_configuration_error(url: str) -> None:
    """A Redis URL that redis-py could not use is refused when the settings are read, naming the form."""
    with pytest.raises(ConfigInvalid, match=r"redis_url.*not a usable Redis URL"):
        load_settings(redis_url=url)


def test_the_configuration_celery_shows_holds_no_redis_password() -> None:
    """The workers' Celery configuration, as Flower and `celery inspect conf` show it (masked by Celery), holds
    the Redis password nowhere; only beat's own addition names redbeat's Redis."""
    from celery.app.utils import filter_hidden_settings

    from config.celery_app import beat_config, celery_config

    settings = load_settings(redis_url="redis://redis:6379/0", redis_password="TopSecretPw")
    shown = repr(filter_hidden_settings(celery_config(settings)))
    assert "TopSecretPw" not in shown and "redis:6379" in shown
    assert "TopSecretPw" in beat_config(settings)["redbeat_redis_url"]


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e309, 3600.0, 11 * 365 * 86400.0])
def test_a_retention_that_is_not_a_usable_age_is_refused(seconds: float) -> None:
    """retention_s must be a finite number of seconds between 25 h and ten years: NaN would match every job."""
    with pytest.raises(ConfigInvalid, match="retention_s"):
        load_settings(retention_s=seconds)


def test_webhook_tries_must_end_before_the_purge_removes_the_batch() -> None:
    """A webhook give-up later than the retention (less an hour) is refused: the batch's own webhook would be
    purged while its events still wait for delivery."""
    with pytest.raises(ConfigInvalid, match="webhook_give_up_s"):
        load_settings(retention_s=90000, webhook_give_up_s=90000)
    assert load_settings(retention_s=90000).webhook_give_up_s == 86400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("poll_target", 0.0),
        ("poll_target", 1.0),
        ("poll_watched_target", float("nan")),
        ("poll_min_delay_s", 0.0),
        ("poll_image_cap_s", 200.0),
        ("poll_video_cap_s", float("inf")),
        ("watch_interval_s", 0.06),
        ("task_list_qps", 1e-300),
        ("slot_probe_s", 5e-324),
        ("slot_probe_s", float("inf")),
    ],
)
def test_poll_and_watcher_settings_outside_their_range_are_refused(name: str, value: float) -> None:
    """Each poll or watcher setting out of its range (NaN, inf, zero, a denormal) is refused, naming it."""
    with pytest.raises(ConfigInvalid, match=name):
        load_settings(**{name: value})


def test_the_shortest_poll_wait_may_not_exceed_the_longest() -> None:
    """poll_min_delay_s above a poll cap is refused, naming both."""
    with pytest.raises(ConfigInvalid, match=r"poll_min_delay_s.*poll_image_cap_s"):
        load_settings(poll_min_delay_s=40.0, poll_image_cap_s=30.0)
    assert load_settings(poll_min_delay_s=30.0).poll_min_delay_s == 30.0


#: A model a config adds: every figure given.
DALL_E = """
[models."dall-e-3"]
kind = "image"
protocol = "image-synthesis"
prompt_max_chars = 4000
n = [1, 1]
sizes = { rule = "fixed", sizes = ["1024*1024"] }
default_size = "1024*1024"
submit_rate_per_s = 1
max_concurrent = 3
"""
