"""The `genq` command line, the top floor: it wires the ways work enters (`producer/`) and the workers'
operations to the services it asks for, and presents what it sees.

- `commands.py`: the Typer app, its command table, and the thin commands (status, watch, report, export,
  doctor, cancel, retry, resume, purge, consume, run-schedule)
- `batch_command.py`: `genq batch` (check, dry run, enqueue, wait, summary)
- `models_command.py`: `genq models` (the catalogue in force, and where each figure came from)
- `worker_commands.py`: the long-running commands (worker, beat, flower, sim)
- `services.py`: the one seam to the local stack (`ops.localstack`)
- `common.py`: the consoles, `--config`, settings loading, exit with a message
- presentation: `display.py` (progress, tables), `eta.py`, `export.py`, `report.py` (the HTML contact sheet)

Only this package and `ops` itself import `ops` (`tests/unit/test_layering.py`).
"""

from producer.cli.commands import app, main

__all__ = ["app", "main"]
