"""The package's shape: no import cycles (deferred imports included), quant/'s private names stay inside."""

import ast
from pathlib import Path

import npuq

ROOT = Path(npuq.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> list[tuple[str, list[str]]]:
    """(imported npuq module, names taken from it) for every import statement, deferred ones too."""
    found = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("npuq")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + [base]).strip(".")
            if not base.startswith("npuq"):
                continue
            # ``from npuq.remedies import best`` imports the module npuq.remedies.best
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, []) if sub in modules else (base, [alias.name]))
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, list[str]]]]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    edges, raw = {}, {}
    for name, path in files.items():
        raw[name] = _imports(path, modules)
        # importing a.b.c runs a/__init__ and a.b/__init__ too, but those edges are the package's own
        edges[name] = {m for m, _ in raw[name] if m in modules and m != name}
    return edges, raw


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycles():
    edges, _ = _graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_outside_quant_imports_its_private_names():
    _, raw = _graph()
    leaks = [(module, target, name) for module, imports in raw.items() if not module.startswith("npuq.quant")
             for target, names in imports if target.startswith("npuq.quant")
             for name in names if name.startswith("_")]
    assert leaks == []
