"""The job store is closed: read from the source with `ast`, no module outside the store packages
(`workers/jobstore/`, `workers/quota/`) builds or names a genq Redis key, or reaches for a store's client.

Three things would open it: importing the key builders (`workers.jobstore.keys`), writing a key out
(a string that starts with `genq:`), or using a store's Redis client (`store.redis`, `store._redis`).
Two places may name keys, each for a stated reason:
- `config/settings.py` names the defaults of the two streams a user configures (`event_stream`,
  `request_stream`): they are part of the configuration, documented in `docs/configuration.md`;
- `ops/chaos/audit.py` checks what genq wrote against raw Redis on purpose: an audit that read through the
  store would trust the code it audits.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workers", "producer", "config", "ops")
STORE_PACKAGES = ("workers/jobstore/", "workers/quota/")
#: Module -> the `genq:` strings it may hold, and why (see the module docstring).
ALLOWED_KEY_NAMES = {"config/settings.py": {"genq:events", "genq:requests"}}
INDEPENDENT_OBSERVERS = {"ops/chaos/audit.py"}


def outside_modules() -> Iterator[tuple[str, ast.AST]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(STORE_PACKAGES) or relative in INDEPENDENT_OBSERVERS:
                continue
            yield relative, ast.parse(path.read_text(encoding="utf-8"), filename=relative)


def key_openings(relative: str, tree: ast.AST) -> list[str]:
    """Every way `tree` opens the store: key-builder imports, written-out keys, a store's client."""
    found: list[str] = []
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "workers.jobstore.keys":
            found.append(f"line {node.lineno}: imports from workers.jobstore.keys")
        elif isinstance(node, ast.ImportFrom) and node.module == "workers.jobstore":
            found += [f"line {node.lineno}: imports workers.jobstore.keys" for a in node.names if a.name == "keys"]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name == "workers.jobstore.keys"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value.startswith("genq:") and node.value not in ALLOWED_KEY_NAMES.get(relative, set()):
                found.append(f"line {node.lineno}: names the key {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in {"redis", "_redis"}:
            owner = ast.unparse(node.value)
            if owner.split(".")[-1].endswith("store"):
                found.append(f"line {node.lineno}: uses the store's client ({owner}.{node.attr})")
    return found


def test_no_module_outside_the_store_packages_names_a_key_or_uses_a_store_client() -> None:
    """Outside `workers/jobstore/` and `workers/quota/`, no module imports the key builders, writes out a genq
    key, or uses a store's Redis client."""
    offenders = {relative: found for relative, tree in outside_modules() if (found := key_openings(relative, tree))}
    assert offenders == {}


def test_each_way_of_opening_the_store_is_found() -> None:
    """The scan reports a key-builder import, a written-out key and a store's client, and ignores docstrings
    and the allowed settings defaults."""
    source = '''"""Mentions `genq:due` in prose."""
from workers.jobstore import keys
from workers.jobstore.keys import DUE
x = "genq:due"
rt.store.redis.zrem(x, "r")
store._redis.get("k")
'''
    found = key_openings("producer/example.py", ast.parse(source))
    assert [line.split(":")[0] for line in found] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    settings = 'event_stream: str = "genq:events"\n'
    assert key_openings("config/settings.py", ast.parse(settings)) == []
    assert key_openings("producer/other.py", ast.parse(settings)) != []
