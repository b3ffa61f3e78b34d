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
    assert main.limits_for("wan2.5-t2i-preview").slot_limit == 4 + 4  # 4 at once, and as many queued upstream
    assert main.limits_for("wan2.2-t2i-flash").submit_rate_per_s == 2  # the catalogue's figure
    assert cn.limits_for("wan2.6-t2i").slot_limit == 5 and not cn.serves("wan2.5-t2i-preview")
    assert cn.resolved_base_url == REGION_BASE_URLS["beijing"]
    assert "main-key" not in repr(settings)
    assert redact(None, "info", {"event": "key main-key-bbbbbbbb used"}) == {"event": "key *** used"}


def test_accounts_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_ACCOUNTS holds the same list as JSON; without it, one account is made of the top-level settings."""
    monkeypatch.setenv("GENQ_ACCOUNTS", '[{"name": "a", "api_keys": ["k-aaaaaaaa"], "query_qps": 10}]')
    assert [a.name for a in load_settings().resolved_accounts()] == ["a"]
    monkeypatch.delenv("GENQ_ACCOUNTS")
    monkeypatch.setenv("GENQ_ACCOUNT", "solo")
    (solo,) = load_settings().resolved_accounts()
    assert solo.name == "solo" and solo.limits_for("wan2.6-t2i").submit_rate_per_s == 5


def test_an_override_for_an_unknown_model_names_the_known_ones() -> None:
    """A limit for a model the catalogue does not know is refused with the list of known models."""
    from pydantic import ValidationError

    from config.accounts import AccountSettings

    with pytest.raises(ValidationError, match="known: "):
        AccountSettings(name="x", limits={"dall-e-3": (1, 1)})
