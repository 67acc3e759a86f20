"""The house (docs/architecture.md): imports run down the layers, never up, and never in a cycle.

ground   meterwatch.core            imports nothing else of the project
domain   protocols, storage, analytics   ground only
         simulators                 + protocols (serves what the collector decodes)
         collector                  + protocols, storage (decodes, hands to the store)
         alerts                     + analytics (consumes findings)
app      meterwatch.* (config, wiring, scheduling, service, CLI)   anything

Every import counts, including ones inside functions and under ``TYPE_CHECKING``: a deferred
import is still a dependency. Module-level imports must also be free of cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ("protocols", "storage", "analytics", "simulators", "collector", "alerts")
#: What each layer may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "protocols": frozenset({"core"}),
    "storage": frozenset({"core"}),
    "analytics": frozenset({"core"}),
    "simulators": frozenset({"core", "protocols"}),
    "collector": frozenset({"core", "protocols", "storage"}),
    "alerts": frozenset({"core", "analytics"}),
    "app": frozenset({"core", *DOMAIN}),
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed namespace."""
    out: dict[str, Path] = {}
    for top, prefix in [("meterwatch", "meterwatch"), *((d, f"meterwatch.{d}") for d in DOMAIN)]:
        base = ROOT / top
        for path in base.rglob("*.py"):
            rel = path.relative_to(base)
            if top == "meterwatch" and rel.parts[0] in DOMAIN:
                continue  # the symlinks to the domain folders
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "core":
        return "core"
    if len(parts) > 1 and parts[1] in DOMAIN:
        return parts[1]
    return "app"


def imports(module: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(n) for n in tree.body}
    # Imports under a module-level `if` (TYPE_CHECKING) do not run at import either.
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            for alias in node.names:
                yield f"{name}.{alias.name}", node.lineno, id(node) in top_level
                yield name, node.lineno, id(node) in top_level


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (longest known prefix), else None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def violations(modules: dict[str, Path]) -> tuple[list[str], dict[str, set[str]]]:
    """Wrong-way imports (with file and line) and the module-level import graph."""
    bad: list[str] = []  # deduplicated below
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in sorted(modules.items()):
        rel = path.relative_to(ROOT)
        for name, line, top in imports(module, path):
            if name.split(".")[0] in DOMAIN:
                bad.append(f"{rel}:{line}: imports {name!r}; use meterwatch.{name}")
                continue
            target = resolve(name, modules)
            if target is None or target == module:
                continue
            src, dst = layer(module), layer(target)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{rel}:{line}: {src} imports {dst} ({target})")
            if top:
                graph[module].add(target)
    return sorted(set(bad)), graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_run_down_the_layers() -> None:
    modules = project_modules()
    assert "meterwatch.core.schema" in modules and "meterwatch.collector.writer" in modules
    bad, _ = violations(modules)
    assert bad == [], "imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    _, graph = violations(project_modules())
    found = cycles(graph)
    assert found == [], "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_catches_a_wrong_way_import_and_a_cycle(tmp_path: Path) -> None:
    """The two checks above can fail: an upward import and a two-module cycle are reported."""
    a = tmp_path / "a.py"
    a.write_text("from meterwatch.service import Service\nimport collector.writer\n")
    b = tmp_path / "b.py"
    b.write_text("from meterwatch.core import a\n")
    modules = {"meterwatch.core.a": a, "meterwatch.core.b": b, "meterwatch.service": b}
    names = [n for n, _, _ in imports("meterwatch.core.a", a)]
    assert "meterwatch.service.Service" in names and "collector.writer" in names
    # core importing the app layer is wrong; a bare top-level domain name is wrong.
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        bad, graph = violations(modules)
    finally:
        ROOT = saved
    assert any("core imports app" in b for b in bad)
    assert any("use meterwatch.collector.writer" in b for b in bad)
    assert cycles({"x": {"y"}, "y": {"x"}, "z": {"x"}}) == [["x", "y"]]
