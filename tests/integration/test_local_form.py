"""The local form's own state: private on disk, and a Redis that asks for a password."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from ops.localstack import LocalStack, isolated_settings


def test_the_local_state_is_private_and_its_redis_asks_for_the_password(tmp_path: Path) -> None:
    """The state folder is created 0700 (an existing looser one is tightened), the secrets file is 0600, the
    local Redis refuses a client without the password from that file and accepts the stack's URL, and the
    password is not on the Redis process's command line."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    configured = isolated_settings(state)
    with LocalStack(configured) as stack:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        secrets_file = state / "local-secrets.json"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        password = json.loads(secrets_file.read_text())["redis_password"]
        assert urlsplit(stack.settings.redis_url).password is not None
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(configured.redis_url).ping()
        assert redis.Redis.from_url(stack.settings.redis_url).ping()
        # Valkey rewrites its process title, so `ps` cannot tell: what genq gave it is checked instead.
        assert password not in " ".join(stack.process("redis").argv)
        auth = state / "redis" / "auth.conf"
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and password in auth.read_text()

        # A second command on the same state folder finds this Redis by its password and starts none.
        with LocalStack(configured) as second:
            assert second.settings.redis_url == stack.settings.redis_url
            assert not any(p.name == "redis" for p in second.started)
