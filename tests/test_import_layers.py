"""engines/, onstart.py and profiles/ import one way only: profiles -> onstart -> engines (issue 9, item 7).

Two views: the static graph of every import between their modules (nested and type-only ones included),
and what a fresh interpreter actually loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import glmdeploy

PACKAGE = Path(glmdeploy.__file__).resolve().parent
GROUPS = {"engines": PACKAGE / "engines", "onstart": PACKAGE / "onstart.py", "profiles": PACKAGE / "profiles"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for where in GROUPS.values():
        for path in [where] if where.is_file() else sorted(where.rglob("*.py")):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(tree: ast.AST) -> list[str]:
    """Every module an import statement names, nested and ``if TYPE_CHECKING:`` ones included."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(ast.parse(path.read_text(encoding="utf-8"))) if m in modules and m != name}
        for name, path in modules.items()
    }


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan): modules that import each other, directly or around a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            out.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _group_of(module: str) -> str:
    return next(name for name in GROUPS if module == f"glmdeploy.{name}" or module.startswith(f"glmdeploy.{name}."))


def test_no_import_cycle_among_engines_onstart_and_profiles() -> None:
    # Type-only imports count too: engines/ names the Profile type, so the schema must not reach back
    # into onstart or the engines (it used to render the onstart script to validate its length).
    # A loop inside one of the three (two engine modules importing each other lazily) is not this rule's.
    graph = _graph()
    assert "glmdeploy.profiles.model" in graph and "glmdeploy.engines.base" in graph
    across = [sorted(c) for c in _components(graph) if len({_group_of(m) for m in c}) > 1]
    assert across == [], across
    assert not graph["glmdeploy.profiles.model"] & {"glmdeploy.onstart", "glmdeploy.engines"}


def test_importing_the_engines_loads_neither_profiles_nor_onstart() -> None:
    code = (
        "import sys, glmdeploy.engines, glmdeploy.engines.checks;"
        "print(sorted(m for m in sys.modules if m.startswith(('glmdeploy.profiles', 'glmdeploy.onstart'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
