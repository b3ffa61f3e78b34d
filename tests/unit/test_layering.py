"""The floors of the code, read from the source with `ast`: no module imports another that imports it back; only
the front ends (the command line `producer/cli/` and the Python API `producer/api.py`), the seam to the local
stack (`producer/services.py`) and `ops` itself import `ops`, and of `producer/` only that seam imports the local
stack; nothing outside the command line imports it.

Every `import` counts, wherever it is (module level, inside a function, under `TYPE_CHECKING`): a function-level
import is still a dependency, only a later one. `from package import name` is an import of `package.name` when
that is a module, else of `package`; importing a module is not counted as importing its parent package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workers", "producer", "config", "ops")

#: The command line: the top floor.
CLI_PACKAGE = "producer.cli"
#: The one seam to the local stack, shared by the command line and the Python API.
SEAM = "producer.services"
#: The front ends and the seam: with `ops` itself, the only modules that may import `ops`.
FRONT = (CLI_PACKAGE, "producer.api", SEAM)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that the module `name` (at `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(_known_prefix(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.add(submodule if submodule in known else _known_prefix(base, known))
    found.discard("")
    found.discard(name)
    return found


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module a `from ... import` names, with a relative one resolved against the importing module."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _known_prefix(dotted: str, known: set[str]) -> str:
    """The longest prefix of `dotted` that is a known module ('' for a module outside genq)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of genq's packages, and the genq modules it imports; importing a module also runs its
    parent packages' `__init__`, so those count too (except the importer's own packages, already running)."""
    paths = {module_name(path): path for path in source_files()}
    known = set(paths)
    graph = {}
    for name, path in sorted(paths.items()):
        direct = imported_modules(name, path, known)
        own = set(_parents(name))
        graph[name] = direct | {p for m in direct for p in _parents(m) if p in known and p not in own} - {name}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


#: The floors, lowest first: a module may import its own floor and those below, never one above. `ops` stands
#: beside the front ends (it may use everything below it), and the simulator imports nothing of genq.
FLOORS = (("config",), ("workers",), ("producer",), (*FRONT, "ops"))


def floor_of(module: str) -> int:
    """The highest floor whose package holds `module` (`producer.cli` is above `producer`)."""
    return max(i for i, packages in enumerate(FLOORS) if _within(module, packages))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative): each is a
    set of modules that import one another, directly or through each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return f"{', '.join(component)} ({'; '.join(edges)})"


def test_the_graph_sees_every_floor_and_the_cli_package() -> None:
    """The import graph holds the modules of every package, and sees the CLI importing the local stack."""
    graph = import_graph()
    for package in PACKAGES:
        assert package in graph
    assert "ops.localstack" in graph[SEAM]
    assert "producer.cli.common" in graph["producer.cli.batch_command"]  # `from producer.cli import common`


def test_cycles_finds_each_strongly_connected_component() -> None:
    """The cycle finder reports each group of modules that reach one another, and nothing for a chain."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_another_that_imports_it_back() -> None:
    """No genq module imports, directly or through others, a module that imports it back."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_only_the_front_ends_and_ops_import_ops() -> None:
    """Outside `ops` itself, only the front ends (the command line, the Python API) and the seam to the local
    stack import anything of `ops`."""
    graph = import_graph()
    offenders = {
        module: sorted(m for m in imports if _within(m, ["ops"]))
        for module, imports in graph.items()
        if not _within(module, ["ops", *FRONT])
    }
    offenders = {module: ops for module, ops in offenders.items() if ops}
    assert not offenders, f"modules outside {', '.join(FRONT)} and ops that import ops: {offenders}"


def test_dependencies_point_down_the_floors() -> None:
    """No module imports one on a higher floor (config < workers < producer < the command line and ops), and
    the simulator imports nothing of genq: it stands in for a remote service."""
    graph = import_graph()
    upward = {module: sorted(m for m in imports if floor_of(m) > floor_of(module)) for module, imports in graph.items()}
    upward = {module: found for module, found in upward.items() if found}
    assert not upward, f"imports of a higher floor: {upward}"
    simulator = {
        module: sorted(m for m in imports if not _within(m, ["ops.simulator"]))
        for module, imports in graph.items()
        if _within(module, ["ops.simulator"])
    }
    assert {module: found for module, found in simulator.items() if found} == {}


def test_the_front_ends_reach_the_local_stack_through_one_seam() -> None:
    """Of `producer/`, only the seam (`producer/services.py`) imports the local stack."""
    graph = import_graph()
    importers = sorted(
        module
        for module, imports in graph.items()
        if _within(module, ["producer"]) and any(_within(m, ["ops.localstack"]) for m in imports)
    )
    assert importers == [SEAM]


def test_nothing_below_the_cli_imports_it() -> None:
    """The command line is the top floor: no module outside its package imports it."""
    graph = import_graph()
    importers = {
        module: sorted(m for m in imports if _within(m, [CLI_PACKAGE]))
        for module, imports in graph.items()
        if not _within(module, [CLI_PACKAGE])
    }
    importers = {module: cli for module, cli in importers.items() if cli}
    assert not importers, f"modules outside {CLI_PACKAGE} that import it: {importers}"
