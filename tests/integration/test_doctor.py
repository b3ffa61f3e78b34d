"""`genq doctor` says what is wrong in a sentence and exits non-zero: a stopped Redis, a missing bucket, a wrong
API key; and passes on a healthy setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ops.localstack.process import free_port
from tests.conftest import SIM_KEY, RunningSimulator, S3Server


def doctor(env_overrides: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "DASHSCOPE_"))}
    env.update(COLUMNS="200", **env_overrides)
    return subprocess.run(
        [sys.executable, "-c", "from producer.cli import main; main()", "doctor"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def healthy(redis_url: str, s3: S3Server, sim: RunningSimulator) -> dict[str, str]:
    return {
        "GENQ_REDIS_URL": redis_url,
        "GENQ_S3_ENDPOINT": s3.endpoint,
        "GENQ_S3_ACCESS_KEY": s3.access_key,
        "GENQ_S3_SECRET_KEY": s3.secret_key,
        "GENQ_BUCKET": "genq-doctor",
        "DASHSCOPE_API_KEY": SIM_KEY,
        "GENQ_DASHSCOPE_BASE_URL": sim.base_url,
    }


def test_healthy_setup_passes(redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path) -> None:
    """With every service right (the bucket created first), doctor passes and exits 0."""
    from minio import Minio

    Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False).make_bucket("genq-doctor")
    result = doctor(healthy(redis_url, s3_server, simulator), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout and "accepts the key" in result.stdout


def test_stopped_redis_is_named(
    redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Nothing listening at the Redis URL: a sentence naming the address, and exit 1."""
    port = free_port()
    result = doctor(
        {**healthy(redis_url, s3_server, simulator), "GENQ_REDIS_URL": f"redis://127.0.0.1:{port}/0"}, tmp_path
    )
    assert result.returncode == 1
    assert f"Redis at 127.0.0.1:{port}/0 does not answer" in result.stdout


def test_missing_bucket_is_named(
    redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A bucket that does not exist: a sentence naming it and how to fix it, and exit 1."""
    result = doctor({**healthy(redis_url, s3_server, simulator), "GENQ_BUCKET": "genq-nowhere"}, tmp_path)
    assert result.returncode == 1
    assert "The bucket 'genq-nowhere' does not exist" in result.stdout


def test_wrong_api_key_is_named_without_showing_it(
    redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A refused key: a sentence with the service's code and what to check, the key itself nowhere, exit 1."""
    wrong = "sk-" + "9" * 30
    result = doctor({**healthy(redis_url, s3_server, simulator), "DASHSCOPE_API_KEY": wrong}, tmp_path)
    assert result.returncode == 1
    assert "DashScope refused the API key" in result.stdout and "InvalidApiKey" in result.stdout
    assert wrong not in result.stdout + result.stderr


def test_unsigned_webhooks_are_named(
    redis_url: str, s3_server: S3Server, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A webhook URL without a secret: a loud warning that deliveries go out unsigned (a warning, so exit 0)."""
    from minio import Minio

    Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False).make_bucket("genq-doctor-wh")
    env = {
        **healthy(redis_url, s3_server, simulator),
        "GENQ_BUCKET": "genq-doctor-wh",
        "GENQ_WEBHOOK_URL": "https://hooks.example/genq",
    }
    result = doctor(env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN webhook" in result.stdout and "UNSIGNED" in result.stdout
