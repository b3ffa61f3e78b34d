"""The job store is closed: read from the source with `ast`, no module outside the store packages
(`workers/jobstore/`, `workers/quota/`) names a genq Redis key or reaches genq's keys through a client.

The ways to open it, each of which the scan reports:
- importing the key builders (`keys`, from any module of the store package) or a key under another name (a
  constant of the store package whose value is a genq key);
- writing a key out: a string holding `genq:`, or `"genq" + ":..."`, or `":".join(("genq", ...))`;
- a store's client: `.redis` / `._redis` on anything, `.client` / `._client` / `._reader` on a store, outbox,
  inbox or quota, or any of those through `getattr`;
- a Redis client of its own (`make_redis`, `redis.Redis(...)`, `from_url`), which could reach the keys without
  the store. A few modules need one, each for a stated reason (`OWN_CLIENT_ALLOWED`).

Modules wholly outside the rule, each for a stated reason:
- `ops/chaos/audit.py` checks what genq wrote against raw Redis on purpose: an audit that read through the
  store would trust the code it audits;
- `ops/chaos/disruptions.py` is the chaos suite's adversary: it appends a malformed entry to the event stream
  and trims it under the webhook lane, as a hostile or careless producer would.
And `config/settings.py` names the defaults of the two streams a user configures (`event_stream`,
`request_stream`): they are part of the configuration (`docs/configuration.md`).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workers", "producer", "config", "ops")
STORE_PACKAGES = ("workers/jobstore/", "workers/quota/")
OUTSIDE_THE_RULE = {"ops/chaos/audit.py", "ops/chaos/disruptions.py"}
#: Module -> the `genq:` strings it may hold.
ALLOWED_KEY_NAMES = {"config/settings.py": {"genq:events", "genq:requests"}}
#: Modules that may open a Redis client of their own, and why.
OWN_CLIENT_ALLOWED = {
    "workers/runtime.py": "builds the clients the stores, the quota, the outbox and the inbox are given",
    "workers/metrics_server.py": "builds the store whose gauges it serves",
    "producer/beat.py": "gives back redbeat's lock (redbeat's key, not genq's) after Redis came back",
    "ops/doctor.py": "checks that Redis answers, and builds the outbox whose backlog it reports",
    "ops/localstack/services.py": "waits for a Redis server it started to answer",
    "ops/bench_peers.py": "the peers' own bookkeeping in the broker (their keys, not genq's)",
    "ops/bench_quota.py": "clears the peers' broker between runs (their keys, not genq's)",
}
CLIENT_ATTRIBUTES = {"redis", "_redis", "client", "_client", "_reader"}
STORE_LIKE = ("store", "outbox", "inbox", "quota")


def outside_modules() -> Iterator[tuple[str, ast.AST]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(STORE_PACKAGES) or relative in OUTSIDE_THE_RULE:
                continue
            yield relative, ast.parse(path.read_text(encoding="utf-8"), filename=relative)


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _is_key_constant(module: str, name: str) -> bool:
    """Whether `module.name` (a module of the store package) is a genq key under another name."""
    try:
        value = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(value, str) and value.startswith("genq:")


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def key_openings(relative: str, tree: ast.AST) -> list[str]:
    """Every way `tree` opens the store (see the module docstring), as `line N: what`."""
    found: list[str] = []
    docstrings = _docstrings(tree)
    own_client_allowed = relative in OWN_CLIENT_ALLOWED
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workers.jobstore"):
            module = node.module or ""
            for alias in node.names:
                if module == "workers.jobstore.keys" or alias.name == "keys":
                    found.append(f"{where}: imports the key builders ({module}.{alias.name})")
                elif _is_key_constant(module, alias.name):
                    found.append(f"{where}: imports a key under another name ({module}.{alias.name})")
        elif isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name == "workers.jobstore.keys"]
        elif (text := _text(node)) is not None and id(node) not in docstrings:
            if "genq:" in text and text not in ALLOWED_KEY_NAMES.get(relative, set()):
                found.append(f"{where}: names the key {text!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = _text(node.left), _text(node.right)
            if left is not None and right is not None and (left + right).startswith("genq:"):
                found.append(f"{where}: builds a key ({left!r} + {right!r})")
        elif isinstance(node, ast.Call):
            found += _call_openings(node, where, own_client_allowed)
        elif isinstance(node, ast.Attribute) and node.attr in CLIENT_ATTRIBUTES:
            owner = ast.unparse(node.value)
            constructor = owner == "Quota" and node.attr == "redis"  # the quota built on a client it is given
            store_like = any(word in owner.lower() for word in STORE_LIKE)
            if not constructor and (node.attr in {"redis", "_redis"} or store_like):
                found.append(f"{where}: uses a store's client ({owner}.{node.attr})")
    return sorted(found, key=lambda line: int(line.split()[1].rstrip(":")) if line.split()[1][0].isdigit() else 0)


def _call_openings(node: ast.Call, where: str, own_client_allowed: bool) -> list[str]:
    function = ast.unparse(node.func)
    if function.endswith('".join') or function.endswith("'.join"):
        parts = node.args[0].elts if node.args and isinstance(node.args[0], (ast.Tuple, ast.List)) else []
        if any(_text(part) == "genq" for part in parts):
            return [f"{where}: builds a key ({function}(...))"]
    if function == "getattr" and len(node.args) >= 2 and _text(node.args[1]) in CLIENT_ATTRIBUTES:
        return [f"{where}: uses a store's client (getattr(..., {_text(node.args[1])!r}))"]
    own_client = function in {"make_redis", "redis.Redis", "Redis"} or function.endswith("from_url")
    if own_client and not own_client_allowed:
        return [f"{where}: opens a Redis client of its own ({function})"]
    return []


def test_no_module_outside_the_store_packages_names_a_key_or_reaches_one() -> None:
    """Outside `workers/jobstore/` and `workers/quota/`, no module imports the key builders (or a key under
    another name), writes out or builds a genq key, uses a store's client, or opens a client of its own without a
    stated reason."""
    offenders = {relative: found for relative, tree in outside_modules() if (found := key_openings(relative, tree))}
    assert offenders == {}


def test_each_way_of_opening_the_store_is_found() -> None:
    """The scan reports each way in (key-builder imports from any store module, a key constant under another
    name, keys written out or built, a store's client directly, through a variable or `getattr`, a client of its
    own), and ignores docstrings and the allowed settings defaults."""
    source = '''"""Mentions `genq:due` in prose."""
from workers.jobstore import keys
from workers.jobstore.redis_store import keys as builders
from workers.jobstore.request_inbox import DEAD_LETTERS
x = "genq:due"
y = "genq" + ":due"
z = ":".join(("genq", "due"))
rt.store.redis.zrem(x, "r")
s = rt.store
s._redis.get("k")
getattr(store, "_redis")
rt.outbox.client.zcard("q")
make_redis(settings).xadd("s", {})
redis.Redis.from_url(url)
'''
    found = key_openings("producer/example.py", ast.parse(source))
    assert [line.split(":")[0] for line in found] == [f"line {n}" for n in (*range(2, 9), *range(10, 15))], found
    settings = 'event_stream: str = "genq:events"\n'
    assert key_openings("config/settings.py", ast.parse(settings)) == []
    assert key_openings("producer/other.py", ast.parse(settings)) != []
    assert key_openings("workers/runtime.py", ast.parse("make_redis(settings)\n")) == []
