"""The local form's own state: private on disk, and a Redis that asks for a password."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from ops.localstack import LocalStack, isolated_settings, services
from ops.localstack.process import ManagedProcess, StackError, free_port


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


def test_s3_starts_on_fresh_ports_when_another_program_took_one_of_weeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a program binds one of the ports chosen for `weed` between the choice and weed's start (the race
    behind a CI failure), weed exits saying so and the S3 server is started again on fresh ports; a failing
    start's log is closed and its end quoted in the error."""
    taken = socket.create_server(("127.0.0.1", 0))
    taken_port = taken.getsockname()[1]
    chosen = iter([taken_port])
    real_free_port = services.free_port

    def first_choice_taken(*, with_grpc_offset: bool = False) -> int:
        return next(chosen, None) or real_free_port(with_grpc_offset=with_grpc_offset)

    monkeypatch.setattr(services, "free_port", first_choice_taken)
    s3_port = real_free_port(with_grpc_offset=True)
    logs = tmp_path / "logs"
    try:
        process = services.start_s3(
            tmp_path / "s3", s3_port, logs, access_key="k", secret_key="s", base_env=dict(os.environ)
        )
        try:
            assert services.s3_ready(f"127.0.0.1:{s3_port}")
            log = (logs / "s3.log").read_text()
            assert f"port {taken_port} for Master" in log  # the first attempt did hit the taken port
        finally:
            process.stop()

        # The S3 port itself is the caller's: a start on a taken one fails at once, quoting weed's reason.
        with pytest.raises(
            StackError, match=rf"(?s)exited with code 1 before serving S3.*its log ends:.*port {taken_port} "
        ):
            services.start_s3(
                tmp_path / "s3", taken_port, logs, access_key="k", secret_key="s", base_env=dict(os.environ)
            )
        assert (logs / "s3.log").read_text().count(f"port {taken_port} for S3") == 1  # not tried again
    finally:
        taken.close()


def test_s3_starts_again_when_a_port_is_taken_after_weeds_own_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a program binds weed's filer port after weed checked it free but before weed listens on it (weed then
    dies of a Fatal, exit 255, its log ending in goroutine stacks), the S3 server is started again on fresh ports;
    when the S3 port is the one lost, the error quotes weed's Fatal line, not the stacks, and weed is not tried
    again."""
    attempts: list[list[int]] = []  # the ports weed was given, per attempt
    real_weed_ports = services.weed_ports

    def recorded(s3_port: int, count: int = 4) -> list[int]:
        attempts.append(real_weed_ports(s3_port, count))
        return attempts[-1]

    monkeypatch.setattr(services, "weed_ports", recorded)
    logs = tmp_path / "logs"
    taken: list[socket.socket] = []

    def take_after_weeds_check(port_of: Callable[[], int]) -> None:
        # weed prints its banner after checking every port, then starts master, volume and filer in turn.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (logs / "s3.log").exists() and b"Starting SeaweedFS Mini" in (logs / "s3.log").read_bytes():
                with contextlib.suppress(OSError):
                    taken.append(socket.create_server(("127.0.0.1", port_of())))
                return
            time.sleep(0.005)

    def start() -> ManagedProcess:
        return services.start_s3(
            tmp_path / "s3", s3_port, logs, access_key="k", secret_key="s", base_env=dict(os.environ)
        )

    s3_port = free_port(with_grpc_offset=True)
    watcher = threading.Thread(target=take_after_weeds_check, args=(lambda: attempts[0][2],))  # the filer's port
    watcher.start()
    try:
        process = start()
        watcher.join()
        try:
            assert taken, "weed bound its filer port before the test could take it: the race was not reproduced"
            assert services.s3_ready(f"127.0.0.1:{s3_port}")
            log = (logs / "s3.log").read_text()
            assert f"127.0.0.1:{attempts[0][2]}: bind: address already in use" in log  # the first attempt lost it
            assert len(attempts) == 2
        finally:
            process.stop()
    finally:
        watcher.join()
        for sock in taken:
            sock.close()
        taken.clear()

    # The S3 port itself is the caller's: lost after weed's check, the start fails once, naming weed's Fatal.
    (logs / "s3.log").unlink()
    attempts.clear()
    watcher = threading.Thread(target=take_after_weeds_check, args=(lambda: s3_port,))
    watcher.start()
    try:
        with pytest.raises(StackError) as raised:
            started = start()
            started.stop()  # weed won the race: stop it, and the test fails below as "did not raise"
        assert taken, "weed bound the S3 port before the test could take it: the race was not reproduced"
        assert re.search(rf"(?s)exited with code 255 .*\nweed's reason: F\d{{4}} .*:{s3_port}: bind", str(raised.value))
        assert len(attempts) == 1  # not tried again
    finally:
        watcher.join()
        for sock in taken:
            sock.close()
