"""Settings: environment over TOML file over defaults; region URLs; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import REGION_BASE_URLS, load_settings


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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
