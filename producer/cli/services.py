"""The command line's services: `producer/services.py` (the seam to the local stack) with its failures worded as
a command ends, one sentence and exit code 3, and its warnings printed on the error console.

    with local_services(settings, workers=1) as services:
        store = make_store(services.settings)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from config.settings import Settings
from producer.cli import common
from producer.cli.common import fail
from producer.cli.display import styled
from producer.services import ServiceMissing, Services, open_services, unreachable


@contextmanager
def local_services(
    settings: Settings, *, workers: int = 0, s3: bool = True, dashscope: bool = True
) -> Iterator[Services]:
    """`open_services` for a command: a service missing, or lost half-way, ends it with exit code 3."""

    def warn(text: str) -> None:
        common.errors.print(styled(("warning:", "yellow"), f" {text}"))

    try:
        with open_services(settings, workers=workers, s3=s3, dashscope=dashscope, warn=warn) as services:
            yield services
    except ServiceMissing as exc:
        raise fail(str(exc), 3) from exc


def require(settings: Settings, *, s3: bool = True, dashscope: bool = True) -> None:
    """End a long-running command (worker, beat, flower) with exit code 3 when what it runs on is missing:
    it starts nothing, in either form."""
    missing = unreachable(settings, s3=s3, dashscope=dashscope, hint=False)
    if missing is not None:
        raise fail(missing, 3)
