"""Coverage.py inside Celery's prefork pool processes; used only while coverage.py measures the worker.

`config/celery_app.py` imports this module only when `coverage` is already imported, i.e. when the process was
started under coverage.py (the test suite, see docs/coverage.md); a worker that is not measured never loads it.

coverage.py's `patch = fork` restarts measurement in each forked pool process, and `patch = _exit` saves it when
billiard ends the process with `os._exit`. That is not enough when the worker is stopped with SIGTERM to its
process group: billiard's handler in the pool process raises SystemExit, and the pool process is then killed by
the second SIGTERM its parent sends while it shuts the pool down, before it reaches `os._exit`. Celery's
`worker_process_shutdown` runs in the pool process on both paths, first: the data is saved there, with SIGTERM
held back while the file is written (a signal that arrives meanwhile is delivered right after, as before).
"""

from __future__ import annotations

import signal
from typing import Any

import coverage
from celery.signals import worker_process_shutdown


def install() -> None:
    """Connect the pool-process hook if coverage.py is measuring this process; otherwise do nothing."""
    if coverage.Coverage.current() is not None:
        worker_process_shutdown.connect(_save, weak=False)


def _save(**_: Any) -> None:
    cov = coverage.Coverage.current()
    if cov is None:
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        cov.save()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
