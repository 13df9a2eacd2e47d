"""The rule behind the layout: the core knows no plugin, plugins use only the public API, and
no module imports itself back through others.

Imports are read from the source (every `import` and `from … import`, at any depth, except
under `if TYPE_CHECKING:`), so a function-level import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What a plugin may import from the core (docs/plugins.md, "The public API").
PUBLIC = frozenset({"proxy.plugin", "proxy.host", "proxy.cli_frame", "proxy.testing", "proxy.web"})


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in ("proxy", "plugins"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for orelse in child.orelse for n in [orelse, *_walk(orelse)])
            continue
        yield child
        yield from _walk(child)


def _package(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str) -> set[str]:
    """The project modules `module` imports (a `from pkg import name` counts as `pkg.name`
    when that is a module, else as `pkg`)."""
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package(module).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_core_imports_no_plugin() -> None:
    """Nothing under proxy/ imports anything under plugins/."""
    bad = sorted(
        f"{m} imports {i}"
        for m, deps in GRAPH.items()
        if m.startswith("proxy")
        for i in deps
        if i.startswith("plugins")
    )
    assert bad == []


def test_plugins_use_only_the_public_api() -> None:
    """Billing included, a plugin imports from the core only the public modules."""
    bad = sorted(
        f"{m} imports {i}"
        for m, deps in GRAPH.items()
        if m.startswith("plugins")
        for i in deps
        if i.startswith("proxy") and i not in PUBLIC and i != "proxy"
    )
    assert bad == []


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for dep in sorted(GRAPH[node]):
            if dep == start:
                return [*path, start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def test_no_import_circles() -> None:
    """No module reaches itself through its imports."""
    cycles = {" -> ".join(c) for m in sorted(GRAPH) if (c := _cycle_from(m)) is not None}
    assert sorted(cycles) == []


def test_the_checker_sees_imports() -> None:
    """The graph is not empty by accident: known edges are found, in both directions of the rule."""
    assert "proxy.plugin" in GRAPH["plugins.billing.plugin"]
    assert "proxy.host" in GRAPH["plugins.billing.ledger"]
    assert "plugins.billing.store.base" in GRAPH["plugins.billing.store.sqlite.store"]


def test_docs_and_code_cite_nothing_outside_the_repository() -> None:
    """docs/ is self-contained: the design and the billing rules the code cites are in
    docs/design.md and docs/billing-rules.md, not in files beside the repository."""
    outside = ("DESIGN.md", "spec/billing.md", "../shared", "seeds/")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *MODULES.values()]
    bad = sorted(
        f"{path.relative_to(ROOT)}: {word}" for path in files for word in outside if word in path.read_text("utf-8")
    )
    assert bad == []
    assert (ROOT / "docs" / "billing-rules.md").exists() and (ROOT / "docs" / "design.md").exists()
