"""What every command of the `genq` command line shares: its two consoles, the `--config` option, loading the
settings, and ending a command with a message and an exit code.

Exit codes: 0 every accepted job succeeded (rejected rows are reported, not fatal); 1 some job did not succeed,
or waiting timed out; 2 bad usage or unreadable input; 3 a service could not be reached or started.

Commands print through `common.console` and `common.errors`, looked up when they print (tests put consoles of a
known width in their place).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from config.logging import configure_logging
from config.settings import ConfigInvalid, Settings, load_settings
from producer.cli.display import PlainConsole, styled

# Prompts, file names, ids and upstream messages are printed as they are: never read as Rich markup (a CSV cell
# `[/oops]` would crash the output; `[link=...]` would inject a terminal hyperlink), and never with their control
# characters live (producer/cli/display.py). genq's own colours are `styled` Text.
console = PlainConsole(stderr=False)
errors = PlainConsole(stderr=True)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A TOML settings file (else GENQ_CONFIG).", exists=True, dir_okay=False),
]

LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Run on this machine alone: start a Redis, an S3 server and (without an API key) the DashScope "
        "simulator where none answers, for this command only (data under GENQ_STATE_DIR).",
    ),
]


def settings_for(config: Path | None, **overrides: Any) -> Settings:
    """The settings of one command (its config file, the environment, and the options it was given), with
    logging configured; invalid settings end the command with exit code 2."""
    configure_logging(json_lines=False) if sys.stderr.isatty() else configure_logging()
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigInvalid as exc:
        raise fail(str(exc), 2) from exc


def command_line(settings: Settings, *words: str) -> str:
    """A `genq` command line to suggest, with `--local` when this command ran in the local form (the follow-up
    needs the same services started again)."""
    return "genq " + " ".join((*words, *(["--local"] if settings.local else [])))


def fail(message: str, code: int) -> typer.Exit:
    """Print `error: message` on stderr; the caller raises the returned exit."""
    errors.print(styled(("error:", "red"), f" {message}"))
    return typer.Exit(code)
