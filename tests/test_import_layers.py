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


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_among_engines_onstart_and_profiles() -> None:
    # Type-only imports count too: engines/ names the Profile type, so the schema must not reach back
    # into onstart or the engines (it used to render the onstart script to validate its length).
    graph = _graph()
    assert "glmdeploy.profiles.model" in graph and "glmdeploy.engines.base" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert not graph["glmdeploy.profiles.model"] & {"glmdeploy.onstart", "glmdeploy.engines"}


def test_importing_the_engines_loads_neither_profiles_nor_onstart() -> None:
    code = (
        "import sys, glmdeploy.engines, glmdeploy.engines.checks;"
        "print(sorted(m for m in sys.modules if m.startswith(('glmdeploy.profiles', 'glmdeploy.onstart'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
