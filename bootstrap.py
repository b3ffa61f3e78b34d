#!/usr/bin/env python3
"""Set up genq from nothing but Python 3.11+, then run a command inside its environment.

    python3 bootstrap.py genq batch examples/prompts.csv   # any `genq ...` command
    python3 bootstrap.py test [PYTEST ARGS]                # lint, type-check, then the test suite

What it does, every time (each step is a no-op when already done):
1. makes `.venv-tools/` with a pinned `uv` in it (pip, from PyPI);
2. `uv sync --frozen --extra dev` into `.venv/` from `uv.lock`, with this very interpreter
   (uv is told never to download a Python of its own);
3. runs the command with `.venv/bin` first on PATH.

It uses only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parent
TOOLS_VENV = ROOT / ".venv-tools"
PROJECT_VENV = ROOT / ".venv"
#: What `test` runs before pytest; the first failure stops it (the same checks CI runs).
CHECKS = [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]]


def _say(message: str) -> None:
    print(f"[bootstrap] {message}", file=sys.stderr, flush=True)


def _ensure_uv() -> Path:
    uv = TOOLS_VENV / "bin" / "uv"
    if uv.exists():
        return uv
    _say(f"installing uv {UV_VERSION} into {TOOLS_VENV.name}/")
    venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS_VENV)
    subprocess.run(
        [str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
        check=True,
    )
    return uv


def _sync(uv: Path) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_PROJECT_ENVIRONMENT=str(PROJECT_VENV))
    subprocess.run(
        [str(uv), "sync", "--frozen", "--extra", "dev", "--quiet", "--python", sys.executable],
        cwd=ROOT,
        env=env,
        check=True,
    )


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before any Python is chosen
        _say(f"genq needs Python 3.11 or newer; this is {sys.version.split()[0]}")
        return 2
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    _sync(_ensure_uv())
    bin_dir = PROJECT_VENV / "bin"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(PROJECT_VENV))
    if argv[0] == "test":
        commands = [[str(bin_dir / tool), *args] for tool, *args in CHECKS]
        commands.append([str(bin_dir / "python"), "-m", "pytest", *argv[1:]])
    else:
        commands = [[str(bin_dir / argv[0]), *argv[1:]]]
    try:
        for command in commands:
            code = subprocess.run(command, cwd=ROOT, env=env).returncode
            if code != 0:
                return code
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
