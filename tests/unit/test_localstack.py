"""The local stack's own checks, before any service is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.localstack import services
from ops.localstack.process import StackError


def test_s3_data_folder_too_long_for_a_unix_socket_is_named(tmp_path: Path) -> None:
    """A state folder whose path would make SeaweedFS's unix socket longer than Linux allows is refused with an
    error that names the socket path and the limit, instead of `weed mini` exiting without a reason."""
    deep = tmp_path / ("x" * 120)
    with pytest.raises(StackError, match=r"unix socket .*filer\.sock would have \d+ characters, over the limit"):
        services.start_s3(deep, 1, tmp_path / "logs", access_key="k", secret_key="s", base_env={})
    assert not deep.exists()  # refused before anything was created
