#!/usr/bin/env python3
"""Set up genq from nothing but Python 3.11+, then run a command inside its environment.

    python3 bootstrap.py genq batch examples/prompts.csv   # any `genq ...` command
    python3 bootstrap.py test [PYTEST ARGS]                # lint, type-check, the test suite under coverage,
                                                           # then (whole suite only) the container check

What it does, every time (each step is a no-op when already done):
1. makes `.venv-tools/` with a pinned `uv` in it (pip, from PyPI);
2. `uv sync --frozen --extra dev --extra local` into `.venv/` from `uv.lock`, with this very interpreter
   (uv is told never to download a Python of its own);
3. runs the command with `.venv/bin` first on PATH.

`test` runs pytest under coverage.py (every Python process the tests start is measured, docs/coverage.md);
without pytest arguments, the whole suite in two test processes (`WHOLE_SUITE`: pytest-xdist). It then
combines the data, writes the HTML report to htmlcov/ and prints branch coverage per package. Without pytest
arguments (the whole suite, as CI runs it) it fails when branch coverage of the packages named in pyproject.toml
`[tool.genq.coverage]` is below its `branch_floor`.

`test` first installs Debian's Prometheus when it is missing (the dashboard test runs a real one), as root with
apt-get only. Without pytest arguments, it then runs the container check (`tests/containers/`: the image built from
ops/docker/Dockerfile and docker-compose.yml brought up with Podman). As root on Debian it first installs Podman,
runc and debootstrap with apt-get when they are missing; elsewhere, without them, the check is skipped and says so.

It uses only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tomllib
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
        [str(uv), "sync", "--frozen", "--extra", "dev", "--extra", "local", "--quiet", "--python", sys.executable],
        cwd=ROOT,
        env=env,
        check=True,
    )


#: pytest's arguments for the whole suite: two test processes, each holding the test it runs and the next, handed
#: another as it finishes one (the slowest files are collected first, tests/conftest.py), so that neither ends long
#: after the other; the slowest tests named.
WHOLE_SUITE = (
    "-n",
    "2",
    "--dist",
    "load",
    "--maxschedchunk",
    "1",
    "--durations",
    "15",
    "--ignore=tests/containers",
)
#: Debian packages some tests need, installed when missing and this is root with apt-get (CI): the dashboard
#: test's Prometheus, before pytest; the container check's engine, after it (docs/operations.md).
SUITE_PACKAGES = {"prometheus": ("prometheus",)}
CONTAINER_PACKAGES = {
    tool: ("podman", "runc", "debootstrap", "uidmap", "slirp4netns", "fuse-overlayfs")
    for tool in ("podman", "runc", "debootstrap")
}


def _ensure_debian_packages(needed: dict[str, tuple[str, ...]], *, what: str, recommends: bool = True) -> None:
    """Install the packages of every command of `needed` that is not on PATH, if this is root with apt-get;
    otherwise say that `what` will skip."""
    import shutil

    packages = sorted({package for tool, names in needed.items() if not shutil.which(tool) for package in names})
    if not packages:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _say(f"{', '.join(packages)} missing and this is not root with apt-get: {what} skips")
        return
    _say(f"installing {', '.join(packages)} (Debian) for {what}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", *([] if recommends else ["--no-install-recommends"]), *packages]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


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
        _ensure_debian_packages(SUITE_PACKAGES, what="the dashboard test (a real Prometheus)", recommends=False)
        commands = [[str(bin_dir / tool), *args] for tool, *args in CHECKS]
        coverage = [str(bin_dir / "python"), "-m", "coverage"]
        # The whole suite (no arguments, as CI runs it) in two test processes: most integration tests wait on
        # real time (task durations, windows), not on the CPU. The slowest files start first (tests/conftest.py).
        pytest_args = argv[1:] or [*WHOLE_SUITE]
        commands += [[*coverage, "erase"], [*coverage, "run", "-m", "pytest", *pytest_args]]
        commands += [[*coverage, "combine", "-q"]]
    else:
        commands = [[str(bin_dir / argv[0]), *argv[1:]]]
    try:
        for command in commands:
            code = subprocess.run(command, cwd=ROOT, env=env).returncode
            if code != 0:
                return code
        if argv[0] != "test":
            return 0
        code = _coverage_report(bin_dir / "python", env, enforce_floor=len(argv) == 1)
        if code != 0 or len(argv) > 1:
            return code
        _ensure_debian_packages(CONTAINER_PACKAGES, what="the container check")
        containers = [str(bin_dir / "python"), "-m", "pytest", "tests/containers", "-p", "no:cacheprovider", "-rs"]
        return subprocess.run(containers, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        return 130


def _coverage_report(python: Path, env: dict[str, str], *, enforce_floor: bool) -> int:
    """Write htmlcov/, print the report of the floored packages and branch coverage per package, hold the floor."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["genq"]["coverage"]
    floored: list[str] = config["packages"]
    coverage = [str(python), "-m", "coverage"]
    subprocess.run([*coverage, "html", "-q"], cwd=ROOT, env=env, check=True)
    include = ",".join(f"{package}/*" for package in floored)
    subprocess.run([*coverage, "report", f"--include={include}", "--skip-covered", "--sort=cover"], cwd=ROOT, env=env)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "coverage.json"
        subprocess.run([*coverage, "json", "-q", "-o", str(report)], cwd=ROOT, env=env, check=True)
        files = json.loads(report.read_text())["files"]
    together = " + ".join(floored)
    totals: dict[str, list[int]] = {}  # name: [lines run, statements, branches taken, branches]
    for path, entry in files.items():
        package = path.split("/", 1)[0] + "/"
        counts = [entry["summary"][k] for k in ("covered_lines", "num_statements", "covered_branches", "num_branches")]
        for name in [package, together] if package.rstrip("/") in floored else [package]:
            totals[name] = [a + b for a, b in zip(totals.get(name, [0, 0, 0, 0]), counts, strict=True)]

    def percent(covered: int, total: int) -> float:
        return 100.0 * covered / total if total else 100.0

    print("\ncoverage of every process the tests started (HTML report: htmlcov/index.html)")
    print(f"  {'':<20}{'statements':>22}{'branches':>22}")
    for name in sorted(totals, key=lambda name: (name == together, name)):
        lines, statements, taken, branches = totals[name]
        print(
            f"  {name:<20}{percent(lines, statements):>9.1f} % {f'({lines}/{statements})':>11}"
            f"{percent(taken, branches):>9.1f} % {f'({taken}/{branches})':>11}"
        )
    measured = percent(*totals[together][2:])
    floor = float(config["branch_floor"])
    what = f"branch coverage of {' and '.join(f'{p}/' for p in floored)}"
    if not enforce_floor:
        print(f"{what}: {measured:.1f} % (a partial run: the floor of {floor:g} % holds for the whole suite only)")
        return 0
    if measured < floor:
        print(f"FAIL: {what} is {measured:.1f} %, below the floor of {floor:g} % (pyproject.toml [tool.genq.coverage])")
        return 1
    print(f"{what}: {measured:.1f} %, floor {floor:g} % (pyproject.toml [tool.genq.coverage])")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
