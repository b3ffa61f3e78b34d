"""Webhook signing and retry policy as plain functions: secrets in both forms, the headers a Standard Webhooks
verifier accepts, the warning for unsigned webhooks, and a retry schedule that spans about a day."""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from config.settings import ConfigInvalid, Settings, load_settings
from workers.webhook import retry_delay_s
from workers.webhook_signing import delivery_headers, unsigned_warning, webhook_id

BODY = json.dumps({"id": "b.1/j.2/succeeded/1", "type": "genq.job.succeeded"}).encode()


def test_both_secret_forms_sign_what_the_reference_verifier_accepts() -> None:
    """A whsec_ secret is used as the bytes it encodes and a raw one as its UTF-8 bytes (the verifier is then
    given those bytes); with both configured, each verifies alone."""
    key = secrets.token_bytes(32)
    current, previous = "whsec_" + base64.b64encode(key).decode().rstrip("="), "plain-old-" + secrets.token_hex(8)
    settings = Settings(
        webhook_url="http://x", webhook_secret=SecretStr(current), webhook_secret_previous=SecretStr(previous)
    )
    assert settings.webhook_keys == (key, previous.encode())
    headers = delivery_headers(settings, "b.1/j.2/succeeded/1", BODY, time.time())
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(current).verify(BODY, headers)
    Webhook(previous.encode()).verify(BODY, headers)


def test_a_whsec_secret_that_is_not_base64_is_refused_without_showing_it() -> None:
    """A misconfigured key is a config error at start, naming the setting, never the value."""
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(webhook_secret=SecretStr("whsec_not*base64!"))
    assert "webhook_secret" in str(caught.value) and "not*base64" not in str(caught.value)


def test_the_webhook_id_is_stable_and_free_of_dots() -> None:
    """Event ids may hold dots (batch ids, timestamps); the signed prefix must not."""
    assert webhook_id("b.1/j/succeeded/1") == webhook_id("b.1/j/succeeded/1") != webhook_id("b.1/j/failed/1")
    assert "." not in webhook_id("batch/b.1/finished/1796162793.84")


def test_unsigned_webhooks_are_announced() -> None:
    """A URL without a secret gets a warning that says so; a signed URL or no URL gets none."""
    assert "UNSIGNED" in (unsigned_warning(Settings(webhook_url="http://x")) or "")
    assert unsigned_warning(Settings(webhook_url="http://x", webhook_secret=SecretStr("s" * 24))) is None
    assert unsigned_warning(Settings()) is None


def test_default_retries_back_off_from_seconds_to_an_hour_and_span_about_a_day() -> None:
    """Replaying the give-up rule of workers/webhook.py with the defaults: the first wait is 5 s, waits double up
    to an hour, and the last try falls between 20 and 24 h after the first."""
    settings = Settings()
    delays = [retry_delay_s(settings, attempts) for attempts in range(1, 40)]
    assert delays[0] == 5.0 and max(delays) == 3600.0 and delays == sorted(delays)
    assert retry_delay_s(settings, 3, jitter=1.0) == pytest.approx(20.0 * 1.2)
    waited, tries = 0.0, 1
    while waited + retry_delay_s(settings, tries) <= settings.webhook_give_up_s:
        waited += retry_delay_s(settings, tries)
        tries += 1
    assert 20 * 3600 < waited <= 24 * 3600 and 25 <= tries <= 40
