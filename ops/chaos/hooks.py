"""The chaos hooks: what a chaos run or a recovery test does to a local stack's processes from the outside, as a
crash or an outage would. They use only the stack's public face (`process`, `started`, `start_again`), so the
development harness (`ops/localstack/`) knows nothing of the disruptions done to it.

- `kill`: SIGKILL a process and its whole group (a worker's pool too), with no grace: a machine dying.
- `restart_redis`: stop Redis cleanly (SIGTERM: its AOF is flushed), stay down a while, start it again on the same
  port and data.
- `stop_s3` / `start_s3`: an S3 outage, from its start to its end (same port and data when it comes back).
"""

from __future__ import annotations

import time

from ops.localstack import LocalStack, StackError
from ops.localstack.process import ManagedProcess


def kill(stack: LocalStack, name: str) -> None:
    """SIGKILL a process the stack started (`worker-local1`, `beat`, ...) and everything in its group, as a crash
    would; it is no longer the stack's to stop."""
    process = stack.process(name)
    process.kill()
    stack.started.remove(process)


def restart_redis(stack: LocalStack, down_s: float = 0.0) -> None:
    """Stop the stack's Redis (SIGTERM: AOF flushed), wait `down_s`, start it again on the same port and data."""
    _started(stack, "redis", "Redis").stop()
    time.sleep(down_s)
    stack.start_again("redis")


def stop_s3(stack: LocalStack) -> None:
    """Stop the stack's S3 server (an outage); `start_s3` brings it back on the same port and data."""
    _started(stack, "s3", "the S3 server").stop()


def start_s3(stack: LocalStack) -> None:
    """Start the S3 server `stop_s3` stopped, on the same port and data."""
    _started(stack, "s3", "the S3 server")
    stack.start_again("s3")


def _started(stack: LocalStack, name: str, what: str) -> ManagedProcess:
    """The stack's process `name`; `StackError` if the stack did not start that service (it uses one running
    elsewhere, which no hook may touch)."""
    for process in stack.started:
        if process.name == name:
            return process
    raise StackError(f"this stack did not start {what}")
