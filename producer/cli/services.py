"""The command line's one seam to the local stack: the only module of `producer/` that imports `ops.localstack`.

A command that needs Redis, S3 or DashScope asks for them here, and gets back only what it uses:

    with local_services(settings, workers=1) as services:
        store = make_store(services.settings)

`services.settings` are the settings to use from then on. Every configured service that answers is used as
is; a loopback address that does not is started for the command's duration (a local Redis or S3 server, with
its data under `state_dir`), as is the DashScope simulator when no API key is set, and, with `workers`, Celery
workers when none is attached; everything started is stopped as the block ends. `simulator_url` and
`simulator_counters()` tell `genq batch` what the simulator saw. A service that cannot be reached or started,
or S3 trouble inside the block, ends the command with its reason and exit code 3.

The rest of the local stack (its processes, starting one more worker, the chaos hooks of `ops/chaos/`) is
development harness, not part of the command line: `Services` does not show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from config.settings import Settings
from ops.localstack import LocalStack, StackError
from producer.cli.common import fail
from workers.errors import StorageError


class Services(Protocol):
    """What a command sees of the services it asked for."""

    @property
    def settings(self) -> Settings:
        """The settings to use: pointing at the services started for this command, if any."""
        ...

    @property
    def simulator_url(self) -> str | None:
        """The local DashScope simulator's address, when one was started (no API key)."""
        ...

    def simulator_counters(self) -> dict[str, Any] | None:
        """The local simulator's counters (`/_sim/counters`), or None when none was started."""
        ...


@contextmanager
def local_services(settings: Settings, *, workers: int = 0) -> Iterator[Services]:
    """The services `settings` name, started as needed for the block (with `workers` local Celery workers if
    none is attached) and stopped after it; `StackError` or `StorageError` end the command with exit code 3."""
    try:
        with LocalStack(settings, workers=workers) as stack:
            yield stack
    except (StackError, StorageError) as exc:
        raise fail(str(exc), 3) from exc
