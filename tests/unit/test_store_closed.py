"""The job store is closed: read from the source with `ast`, no module outside the store packages
(`workers/jobstore/`, `workers/quota/`) names a genq Redis key or reaches genq's keys through a client.

The ways to open it, each of which the scan reports:
- importing the key builders (`keys`, from any module of the store package) or a key under another name (a
  constant of the store package whose value is a genq key);
- writing a key out: a string holding `genq:`, or `"genq" + ":..."`, or `":".join(("genq", ...))`;
- a store's client or internals: `.redis` on anything (a server process's handle aside), `.client` on a store,
  outbox, inbox or quota (the S3 bucket aside), a store's private `_redis`, `_client`, `_reader`, `_run` or
  `_scripts`, any of those through `getattr`, or the key builders through the package (`jobstore.keys`);
- a Redis client of its own (`make_redis`, `Redis(...)`, `StrictRedis(...)`, `from_url`, `from_pool`, however
  `redis` was imported), which could reach the keys without the store. A few modules need one, each for a
  stated reason (`OWN_CLIENT_ALLOWED`); and only the modules that read Celery's own queues may use the broker
  channel's client (`BROKER_CHANNEL_ALLOWED`).

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
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    "workers/metrics_server.py": "builds the store and the quota whose fleet state it serves",
    "producer/beat.py": "gives back redbeat's lock (redbeat's key, not genq's) after Redis came back",
    "ops/doctor.py": "checks that Redis answers, and builds the outbox whose backlog it reports",
    "ops/localstack/services.py": "waits for a Redis server it started to answer",
    "producer/services.py": "probes that Redis answers (and why not) before a production command uses it",
    "producer/api.py": "builds the store and quota of a client that only submits and reads (no API key needed)",
    "ops/bench_peers.py": "the peers' own bookkeeping in the broker (their keys, not genq's)",
    "ops/bench_quota.py": "clears the peers' broker between runs (their keys, not genq's)",
    "ops/bench_retention.py": "reads the server's memory (INFO memory, MEMORY USAGE of the configured event stream)",
}
CLIENT_ATTRIBUTES = {"redis", "_redis", "client", "_client", "_reader"}


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


#: A genq key written out: `genq:` followed by a key's next segment (not prose such as "genq: starting").
KEY_TEXT = re.compile(r"genq:[A-Za-z{]")
PRIVATE_INTERNALS = {"_redis", "_client", "_reader", "_run", "_scripts"}
#: Owners whose `.client` is a store's client; and owners whose names only look alike (the S3 bucket).
STORE_LIKE = ("store", "outbox", "inbox", "quota")
NOT_STORES = ("bucket", "results", "object", "s3", "minio")
#: Modules that may read Celery's own queues through the broker channel's client (kombu's lists, not genq's).
BROKER_CHANNEL_ALLOWED = {"workers/messages.py", "ops/bench_quota.py"}


@dataclass
class Aliases:
    """What the module's imports bound: the `redis` module, its client classes, the store package, its keys."""

    redis_modules: set[str] = field(default_factory=set)
    client_classes: set[str] = field(default_factory=lambda: {"make_redis"})
    store_packages: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, tree: ast.AST) -> Aliases:
        found = cls()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "redis":
                        found.redis_modules.add(alias.asname or "redis")
            elif isinstance(node, ast.ImportFrom) and node.module == "redis":
                found.client_classes.update(a.asname or a.name for a in node.names if "Redis" in a.name)
            elif isinstance(node, ast.ImportFrom) and node.module == "workers":
                found.store_packages.update(a.asname or a.name for a in node.names if a.name == "jobstore")
        return found


def key_openings(relative: str, tree: ast.AST) -> list[str]:
    """Every way `tree` opens the store (see the module docstring), as `line N: what`, in line order."""
    found: list[tuple[int, str]] = []
    docstrings = _docstrings(tree)
    aliases = Aliases.of(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        found += [(line, what) for what in _openings(relative, node, docstrings, aliases)]
    return [f"line {line}: {what}" for line, what in sorted(found)]


def _openings(relative: str, node: ast.AST, docstrings: set[int], aliases: Aliases) -> list[str]:
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workers.jobstore"):
        module = node.module or ""
        return [
            f"imports the key builders ({module}.{a.name})"
            if module == "workers.jobstore.keys" or a.name == "keys"
            else f"imports a key under another name ({module}.{a.name})"
            for a in node.names
            if module == "workers.jobstore.keys" or a.name == "keys" or _is_key_constant(module, a.name)
        ]
    if isinstance(node, ast.Import):
        return [f"imports {a.name}" for a in node.names if a.name == "workers.jobstore.keys"]
    text = _text(node)
    if text is not None:
        allowed = ALLOWED_KEY_NAMES.get(relative, set())
        return (
            [f"names the key {text!r}"]
            if KEY_TEXT.search(text) and id(node) not in docstrings and text not in allowed
            else []
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        left, right = _text(node.left) or "", _text(node.right) or ""
        added = isinstance(node.op, ast.Add) and left == "genq" and right.startswith(":")
        formatted = isinstance(node.op, ast.Mod) and right == "genq" and "%s:" in left
        return [f"builds a key ({ast.unparse(node)})"] if added or formatted else []
    if isinstance(node, ast.Call):
        return _call_openings(relative, node, aliases)
    if isinstance(node, ast.Attribute):
        return _attribute_openings(relative, node, aliases)
    return []


def _attribute_openings(relative: str, node: ast.Attribute, aliases: Aliases) -> list[str]:
    owner = ast.unparse(node.value)
    lowered = owner.lower()
    if node.attr == "keys" and (owner in aliases.store_packages or owner.endswith("jobstore")):
        return [f"uses the key builders ({owner}.keys)"]
    if node.attr in PRIVATE_INTERNALS:
        return [f"reaches into a store's internals ({owner}.{node.attr})"]
    if node.attr == "redis" and not any(word in lowered for word in ("stack", "server")) and owner != "Quota":
        return [f"uses a store's client ({owner}.redis)"]
    if node.attr == "client" and owner.endswith("default_channel") and relative not in BROKER_CHANNEL_ALLOWED:
        return [f"uses the broker's client ({owner}.client)"]
    store_like = any(w in lowered for w in STORE_LIKE) and not any(w in lowered for w in NOT_STORES)
    if node.attr == "client" and store_like:
        return [f"uses a store's client ({owner}.client)"]
    return []


def _call_openings(relative: str, node: ast.Call, aliases: Aliases) -> list[str]:
    function = ast.unparse(node.func)
    if function.endswith(".join"):
        parts = node.args[0].elts if node.args and isinstance(node.args[0], ast.Tuple | ast.List) else []
        if any(_text(part) == "genq" for part in parts):
            return [f"builds a key ({function}(...))"]
    if function == "getattr" and len(node.args) >= 2 and _text(node.args[1]) in CLIENT_ATTRIBUTES:
        return [f"uses a store's client (getattr(..., {_text(node.args[1])!r}))"]
    head, _, last = function.rpartition(".")
    own_client = (
        function in aliases.client_classes
        or (head in aliases.redis_modules and last in {"Redis", "StrictRedis", "from_url"})
        or last in {"from_url", "from_pool"}
    )
    if own_client and relative not in OWN_CLIENT_ALLOWED:
        return [f"opens a Redis client of its own ({function})"]
    return []


def test_no_module_outside_the_store_packages_names_a_key_or_reaches_one() -> None:
    """Outside `workers/jobstore/` and `workers/quota/`, no module imports the key builders (or a key under
    another name), writes out or builds a genq key, uses a store's client, or opens a client of its own without a
    stated reason."""
    offenders = {relative: found for relative, tree in outside_modules() if (found := key_openings(relative, tree))}
    assert offenders == {}


def test_each_way_of_opening_the_store_is_found() -> None:
    """The scan reports each way in (key builders imported from any store module or reached through the
    package, a key constant under another name, keys written out or built, a store's client or internals
    reached directly, through a variable or `getattr`, a client of its own however `redis` was imported, the
    broker channel's client), and ignores docstrings, prose, the S3 bucket and the allowed settings defaults."""
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
w = "%s:due" % "genq"
jobstore.keys.job("b/j")
lane._client.zcard("q")
rt.store._run("transition", [], {})
r.StrictRedis()
R()
connection.default_channel.client.llen("q")
'''
    imports = "import redis as r\nfrom redis import Redis as R\nfrom workers import jobstore\n"
    found = key_openings("producer/example.py", ast.parse(source + imports))
    assert [int(line.split()[1].rstrip(":")) for line in found] == [*range(2, 9), *range(10, 22)], found
    settings = 'event_stream: str = "genq:events"\n'
    assert key_openings("config/settings.py", ast.parse(settings)) == []
    assert key_openings("producer/other.py", ast.parse(settings)) != []
    assert key_openings("workers/runtime.py", ast.parse("make_redis(settings)\n")) == []
    harmless = 'say("genq: starting")\nstack.redis.url\nresults_store = bucket\nobject_store.client.put()\n'
    assert key_openings("producer/other.py", ast.parse(harmless)) == []
