"""Child processes of the local stack: started in their own process group, logged to a file, and always
stopped (SIGTERM to the group, then SIGKILL after a grace period)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: How much of a failed process's log its `StackError` quotes.
LOG_TAIL_LINES = 5
LOG_TAIL_MAX_BYTES = 4096


class StackError(RuntimeError):
    """A local service could not be started; the message says which and where its log is."""


def free_port(*, with_grpc_offset: bool = False) -> int:
    """A free TCP port on 127.0.0.1. `with_grpc_offset`: port + 10000 is free too (SeaweedFS's gRPC)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not with_grpc_offset:
            return port
        if port + 10000 < 65536 and port_is_free(port + 10000):
            return port
    raise StackError("no free port pair found on 127.0.0.1")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.name = name
        self.stop_grace_s = stop_grace_s  # how long `stop()` lets it finish what it does before SIGKILL
        self.argv = tuple(argv)  # as given: what `ps` shows may differ (Valkey rewrites its process title)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, ready: Callable[[], bool], *, timeout_s: float, what: str) -> None:
        """Wait until `ready()`; a process that exits first, or is not ready in time, is stopped (its log closed)
        and raises `StackError` quoting the end of its log, so that a CI failure says why without the file."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                raise StackError(
                    f"{self.name} exited with code {self.popen.returncode} before {what}; see {self.log_path}"
                    f"{self._log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise StackError(f"{self.name} was not {what} within {timeout_s:.0f} s; see {self.log_path}{self._log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the process's log ("" when it cannot be read)."""
        try:
            text = self.log_path.read_bytes()[-LOG_TAIL_MAX_BYTES:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _log_tail(self) -> str:
        tail = self.log_tail()
        return f"; its log ends:\n{tail}" if tail else ""

    def stop(self, grace_s: float | None = None) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(self.stop_grace_s if grace_s is None else grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(5)
        # The group may hold children that outlived the leader (prefork pool processes).
        self._signal(signal.SIGKILL)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole group at once, with no grace (a crash, not a shutdown), and reap the leader."""
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
