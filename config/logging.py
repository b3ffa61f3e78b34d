"""structlog, configured once for genq and Celery alike: JSON when not on a terminal, pretty when on one.

Context bound with `structlog.contextvars` (batch_id, job_id, and DashScope's task_id) is on every line of a
job. As a safety net, every line passes `redact`, which masks the configured secrets (API keys, S3 secret,
webhook secret) wherever they appear, and anything shaped like a bearer token or an `sk-` key.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from pydantic import SecretStr
from structlog.typing import EventDict

_SECRETS: set[str] = set()
_PATTERNS = (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"))
MASK = "***"


def register_secrets(*values: SecretStr | str | None) -> None:
    """Values that must never be printed: masked on every log line from now on."""
    for value in values:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and len(text) >= 4:
            _SECRETS.add(text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _SECRETS:
            value = value.replace(secret, MASK)
        value = _PATTERNS[0].sub(lambda m: m.group(1) + MASK, value)
        return _PATTERNS[1].sub("sk-" + MASK, value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(v) for v in value)
    if isinstance(value, BaseException):
        return _mask(repr(value))
    return value


def redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value of the line (exceptions included)."""
    return {key: _mask(value) for key, value in event_dict.items()}


def configure_logging(
    *, level: int = logging.INFO, json_lines: bool | None = None, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging (Celery's included) through one pipeline to `stream` (stderr)."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
