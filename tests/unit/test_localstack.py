"""The local stack's own checks, before any service is started."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# weed's own lines, as it printed them on this machine (SeaweedFS 4.48), with the ports they named.
WEED_CHECK_FAILED = (
    "E1203 05:48:51.506544 mini.go:1244 Port allocation failed: port 53171 for Master (specified by flag "
    "master.port) is not available on 127.0.0.1 and cannot be used"
)
WEED_LISTEN_FATAL = (
    "F1203 05:50:15.166779 volume.go:629 Volume server listener error:listen tcp 127.0.0.1:35657: bind: "
    "address already in use"
)
WEED_ADMIN_ERROR = (
    "E1203 05:50:17.132161 mini.go:1673 Admin server error: admin server: listen tcp 127.0.0.1:54761: bind: "
    "address already in use"
)
WEED_STACKS = (
    "goroutine 157 [running]:\n"
    "github.com/seaweedfs/seaweedfs/weed/command.startMiniService({0x45b96a8?, 0x2082c21d87d0?})\n"
    "\tgithub.com/seaweedfs/seaweedfs/weed/command/mini.go:1532 +0x4c\n"
    "created by github.com/seaweedfs/seaweedfs/weed/command.startMiniServices in goroutine 1\n"
)


def test_weeds_reason_is_its_first_fatal_line_not_the_stacks_after_it() -> None:
    """Of a log where weed died of a Fatal, the reason is the Fatal line (not the goroutine stacks that end the
    log, nor an earlier error); without a Fatal it is the last error line; with neither, nothing."""
    log = f"I1203 05:50:15.1 mini.go:1 starting\n{WEED_ADMIN_ERROR}\n{WEED_LISTEN_FATAL}\n{WEED_STACKS}"
    assert services.weed_failure_reason(log) == WEED_LISTEN_FATAL
    assert services.weed_failure_reason(f"{WEED_ADMIN_ERROR}\n{WEED_CHECK_FAILED}\n") == WEED_CHECK_FAILED
    assert services.weed_failure_reason(WEED_STACKS) == ""


def test_only_a_port_weed_could_not_have_is_a_lost_port() -> None:
    """A failed start-up check and a Fatal listen are ports lost to another program (fresh ports help); a lost
    admin port is an error weed serves on with, and any other reason is not a lost port."""
    assert services.weed_lost_a_port(WEED_CHECK_FAILED)
    assert services.weed_lost_a_port(WEED_LISTEN_FATAL)
    assert not services.weed_lost_a_port(WEED_ADMIN_ERROR)
    assert not services.weed_lost_a_port("F1203 05:50:15.1 s3.go:1 cannot read the credentials")


@given(named=st.integers(1, 65535), other=st.integers(1, 65535))
def test_a_reason_names_only_the_port_it_names(named: int, other: int) -> None:
    """weed's reason, in either form, names exactly its own port: not one whose digits are a part of it, nor one
    that appears in the line's time or source line (`05:16:12`, `volume.go:629`)."""
    check = WEED_CHECK_FAILED.replace("53171", str(named))
    listen = WEED_LISTEN_FATAL.replace("35657", str(named))
    for reason in (check, listen):
        assert services.names_port(reason, named)
        assert services.names_port(reason, other) == (other == named)
    assert not services.names_port(WEED_LISTEN_FATAL, 629)  # the source line
    assert not services.names_port(WEED_LISTEN_FATAL, 50)  # the time
    assert not services.names_port(WEED_LISTEN_FATAL, 3565)  # a prefix of 35657


def test_weeds_ports_never_meet_the_s3_port_nor_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of the free ports offered, weed is given four whose gRPC twins (+10000) are free too and that meet neither
    the S3 port and its twin nor each other (a port given twice makes weed refuse to start, or serve its master
    page on the S3 port): offers that would are passed over."""
    s3 = 40001
    offered = iter([s3, s3 - 10000, s3 + 10000, 30500, 30500, 40500, 20500, 30600, 30700, 30800, 30900])
    monkeypatch.setattr(services, "free_port", lambda *, with_grpc_offset=False: next(offered))
    assert services.weed_ports(s3) == [30500, 30600, 30700, 30800]
