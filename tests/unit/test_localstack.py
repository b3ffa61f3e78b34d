"""The local stack's own checks, before any service is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from ops.chaos import hooks
from ops.localstack import LocalStack, services
from ops.localstack.process import StackError


def test_s3_data_folder_too_long_for_a_unix_socket_is_named(tmp_path: Path) -> None:
    """A state folder whose path would make SeaweedFS's unix socket longer than Linux allows is refused with an
    error that names the socket path and the limit, instead of `weed mini` exiting without a reason."""
    deep = tmp_path / ("x" * 120)
    with pytest.raises(StackError, match=r"unix socket .*filer\.sock would have \d+ characters, over the limit"):
        services.start_s3(deep, 1, tmp_path / "logs", access_key="k", secret_key="s", base_env={})
    assert not deep.exists()  # refused before anything was created


def test_chaos_hooks_refuse_services_the_stack_did_not_start(tmp_path: Path) -> None:
    """The chaos hooks and `start_again` touch only services the stack started itself: on one that uses a Redis
    and an S3 server running elsewhere, each refuses with a `StackError` naming the service."""
    stack = LocalStack(Settings(state_dir=tmp_path))
    with pytest.raises(StackError, match="this stack did not start Redis"):
        hooks.restart_redis(stack)
    with pytest.raises(StackError, match="this stack did not start the S3 server"):
        hooks.stop_s3(stack)
    with pytest.raises(StackError, match="this stack did not start the S3 server"):
        hooks.start_s3(stack)
    with pytest.raises(StackError, match="this stack did not start s3"):
        stack.start_again("s3")
