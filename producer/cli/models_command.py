"""`genq models`: the catalogue in force (`config/catalogue.py`), and where each figure came from.

Shipped figures come from `config/models.toml`; figures a config file adds or overrides (`[models."name"]`) are
marked, so an operator can see at a glance what this deployment changed. Per-account limits (`accounts.limits`)
are shown beside the model's own, since they are what admission and the submit rate apply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from config.catalogue import CONFIGURED, SHIPPED_FILE, Catalogue, FixedSizes, ModelSpec, PerSide
from config.settings import Settings
from producer.cli import common
from producer.cli.common import ConfigOption, settings_for
from producer.cli.display import cells

#: Marks a figure that the config file gave (added or overridden).
CONFIGURED_MARK = "*"


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Every model, figure and source as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List the models in force: each one's protocol, request rules, defaults and limits, with the figures your
    config added or changed marked (*), and the limits of each account where they differ."""
    settings = settings_for(config)
    catalogue = settings.catalogue
    origin = str(config or os.environ.get("GENQ_CONFIG") or "your config")
    if as_json:
        common.console.print_json(json.dumps(models_json(settings, origin)))
        return
    table = Table(
        "model", "kind", "call", "sizes", "default", "prompt", "n", "per s", "at once", title="Models in force"
    )
    table.columns[0].no_wrap = True
    for name in catalogue:
        spec = catalogue.spec(name)
        table.add_row(*cells(*(_cell(catalogue, spec, field, value) for field, value in _row(spec))))
    common.console.print(table)
    common.console.print("sizes: `genq models --json` lists every fixed size; n: images per request")
    for account in settings.resolved_accounts():
        for model, (rate, slots) in sorted(account.limits.items()):
            common.console.print(f"account {account.name}: {model} at {rate:g} per s and {slots} at once (its own)")
    changed = catalogue.configured()
    common.console.print(
        f"{len(catalogue)} models from {SHIPPED_FILE.name}"
        + (f"; {CONFIGURED_MARK} = from {origin} ({', '.join(changed)})" if changed else "")
    )


def _row(spec: ModelSpec) -> list[tuple[str, object]]:
    call = "synchronous" if spec.synchronous else "async"
    n = f"{spec.n_min}" if spec.n_min == spec.max_n else f"{spec.n_min}-{spec.max_n}"
    return [
        ("name", spec.name),
        ("kind", spec.kind.value),
        ("protocol", call),
        ("sizes", _short_sizes(spec)),
        ("default_size", spec.default_size),
        ("prompt_max_chars", spec.prompt_max_chars),
        ("n", n),
        ("submit_rate_per_s", f"{spec.submit_rate_per_s:g}"),
        ("max_concurrent", spec.max_concurrent),
    ]


def _short_sizes(spec: ModelSpec) -> str:
    rule = spec.sizes
    if isinstance(rule, FixedSizes):
        return f"{len(rule.sizes)} fixed"
    if isinstance(rule, PerSide):
        return f"{rule.min_side}-{rule.max_side} a side"
    aspect = f", {rule.aspect[0]}-{rule.aspect[1]}" if rule.aspect else ""
    return f"{rule.min}-{rule.max}{aspect}"


def _cell(catalogue: Catalogue, spec: ModelSpec, field: str, value: object) -> str:
    return f"{value}{CONFIGURED_MARK}" if catalogue.source(spec.name, field) == CONFIGURED else str(value)


def models_json(settings: Settings, origin: str) -> dict[str, Any]:
    """Every model with its figures and, per figure, where it came from (the shipped file or the config)."""
    catalogue = settings.catalogue
    where = {CONFIGURED: origin}
    return {
        "shipped_file": str(Path(SHIPPED_FILE)),
        "models": {
            name: {
                "figures": catalogue.spec(name).model_dump(mode="json", exclude={"name"}),
                "synchronous": catalogue.spec(name).synchronous,
                "sources": {
                    field: where.get(catalogue.source(name, field), catalogue.source(name, field))
                    for field in catalogue.spec(name).model_dump(exclude={"name"})
                },
            }
            for name in catalogue
        },
        "account_limits": {
            account.name: {
                model: {"submit_rate_per_s": r, "max_concurrent": s} for model, (r, s) in account.limits.items()
            }
            for account in settings.resolved_accounts()
            if account.limits
        },
    }
