"""Keeps docs/plugins.md honest about the hooks of `proxy.plugin.Plugin` and the objects
they receive.

A hook is every public method defined on `Plugin` plus every name in `proxy.pipeline.HOOKS`.
Each must have a docstring in proxy/plugin.py and one `### `name`` section in the guide,
whose first code block shows its real signature and which says when it fires, its order,
what it may mutate and its error policy, with an example. A `### `name`` heading for
anything that is not a hook is a stale section. The checkers are plain functions so the
tests below can also prove that they notice a missing or stale section.

The guide's "Field reference" has a `### Name` table for each object a hook receives
(`REFERENCED`): every public field, property and method must have a row, no row may name
something that is gone, and a field's row shows its declared type.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from proxy.context import UpstreamInfo
from proxy.pipeline import HOOKS
from proxy.plugin import Outcome, Plugin, ProxyError, RequestContext, SSEEvent, UpstreamResponse

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = re.compile(r"^### `([^`]+)`[ \t]*$", re.M)
CODE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PARTS = ("**When:**", "**Order:**", "**May mutate:**", "**Errors:**")
REFERENCED: tuple[type, ...] = (RequestContext, UpstreamInfo, SSEEvent, UpstreamResponse, Outcome, ProxyError)


def plugin_methods() -> set[str]:
    """The public methods defined on `Plugin` itself."""
    return {name for name, value in vars(Plugin).items() if not name.startswith("_") and inspect.isfunction(value)}


def public_hooks() -> set[str]:
    """Every hook the guide must document."""
    return plugin_methods() | set(HOOKS)


def sections(text: str) -> dict[str, list[str]]:
    """`### `name`` heading → the bodies of every section with that heading."""
    found: dict[str, list[str]] = {}
    matches = list(HEADING.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        # A section also stops at the next `## ` heading (a `# ` line may be a code comment).
        body = re.split(r"^## ", text[match.end() : end], maxsplit=1, flags=re.M)[0]
        found.setdefault(match.group(1), []).append(body)
    return found


def section_problems(text: str, hooks: set[str]) -> list[str]:
    """Everything wrong with the guide's hook sections; empty when it is in order."""
    found = sections(text)
    problems = [f"no section for hook {name!r}" for name in sorted(hooks - set(found))]
    problems += [f"section for {name!r}, which is not a hook of Plugin" for name in sorted(set(found) - hooks)]
    problems += [
        f"{len(bodies)} sections for hook {name!r}" for name, bodies in sorted(found.items()) if len(bodies) > 1
    ]
    for name in sorted(hooks & set(found)):
        body = found[name][0]
        problems += [f"section {name!r} lacks {part}" for part in PARTS if part not in body]
        blocks = CODE.findall(body)
        if len(blocks) < 2:
            problems.append(f"section {name!r} needs a signature block and an example")
            continue
        problem = signature_problem(name, blocks[0])
        if problem:
            problems.append(problem)
    return problems


def signature_problem(name: str, block: str) -> str | None:
    """Compare the signature a section shows with the hook's real one."""
    try:
        tree = ast.parse(as_source(block))
    except SyntaxError as exc:
        return f"section {name!r}: signature block does not parse ({exc.msg})"
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not defs or defs[0].name != name:
        return f"section {name!r}: first code block is not `def {name}(...)`"
    real = getattr(Plugin, name, None)
    if real is None:
        return None  # reported as a missing method by test_every_hook_is_a_documented_method
    shown = [a.arg for a in defs[0].args.args]
    params = list(inspect.signature(real).parameters)
    if shown != params:
        return f"section {name!r}: shows parameters {shown}, Plugin.{name} takes {params}"
    if isinstance(defs[0], ast.AsyncFunctionDef) != _is_async(real):
        return f"section {name!r}: async-ness differs from Plugin.{name}"
    return None


def as_source(block: str) -> str:
    """A code block as parseable source: a bare signature line gets a body."""
    text = block.strip()
    if "\n" not in text and re.match(r"(async )?def ", text) and not text.endswith(":"):
        return text + ": ...\n"
    return block


def _is_async(func: object) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


def guide() -> str:
    """The text of docs/plugins.md."""
    return GUIDE.read_text(encoding="utf-8")


def test_every_hook_has_exactly_one_complete_section() -> None:
    assert section_problems(guide(), public_hooks()) == []


def test_every_hook_is_a_documented_method() -> None:
    for name in sorted(public_hooks()):
        method = vars(Plugin).get(name)
        assert method is not None, f"proxy.pipeline.HOOKS names {name!r}, which Plugin does not define"
        assert (method.__doc__ or "").strip(), f"Plugin.{name} has no docstring in proxy/plugin.py"


def test_pipeline_and_plugin_agree_on_the_hooks() -> None:
    assert plugin_methods() == set(HOOKS)


def test_every_python_block_in_the_guide_parses() -> None:
    blocks = CODE.findall(guide())
    assert len(blocks) > len(HOOKS)
    for block in blocks:
        try:
            ast.parse(as_source(block))
        except SyntaxError as exc:
            pytest.fail(f"python block does not parse ({exc.msg}):\n{block}")


def test_the_checker_notices_a_missing_section() -> None:
    text = guide().replace("### `on_body`", "### on_body, the whole-body hook")
    assert "no section for hook 'on_body'" in section_problems(text, public_hooks())


def test_the_checker_notices_a_section_for_a_removed_hook() -> None:
    text = guide() + "\n### `on_chunk`\n\nFired for raw chunks.\n"
    assert "section for 'on_chunk', which is not a hook of Plugin" in section_problems(text, public_hooks())
    text = guide()
    assert "section for 'on_error', which is not a hook of Plugin" in section_problems(
        text, public_hooks() - {"on_error"}
    )


def test_the_checker_notices_an_incomplete_or_wrong_section() -> None:
    text = guide().replace(
        "async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | Drop | None\n",
        "async def on_event(self, ctx: RequestContext) -> SSEEvent | Drop | None\n",
        1,
    )
    problems = section_problems(text, public_hooks())
    assert any("'on_event': shows parameters ['self', 'ctx']" in p for p in problems)
    start = guide().index("### `on_complete`")
    end = guide().index("### `on_error`")
    section = guide()[start:end]
    text = guide().replace(section, section.replace("**Order:**", "Order:"))
    assert "section 'on_complete' lacks **Order:**" in section_problems(text, public_hooks())


# ---- the field reference ---------------------------------------------------------------


def public_members(cls: type) -> dict[str, str]:
    """Public name → its declared type (fields), or "method" / "property"."""
    members: dict[str, str] = {}
    if dataclasses.is_dataclass(cls):
        members.update({f.name: str(f.type) for f in dataclasses.fields(cls) if not f.name.startswith("_")})
    members.update({n: "field" for n in getattr(cls, "__slots__", ()) if not n.startswith("_") and n not in members})
    for name, value in vars(cls).items():
        if name.startswith("_") or name in members:
            continue
        if isinstance(value, property):
            members[name] = "property"
        elif inspect.isfunction(value):
            members[name] = "method"
    return members


def reference_tables(text: str) -> dict[str, dict[str, str]]:
    """`### Name` tables of the "Field reference" section: object → {member: type cell}."""
    head = "\n## Field reference\n"
    if head not in text:
        return {}
    part = re.split(r"^## ", text.split(head, 1)[1], maxsplit=1, flags=re.M)[0]
    tables: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"^### (\w+)[ \t]*\n(.*?)(?=^### |\Z)", part, re.M | re.S):
        rows: dict[str, str] = {}
        for line in match.group(2).splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            name = re.match(r"`(\w+)", cells[0]) if len(cells) >= 3 else None
            if name is not None:
                rows[name.group(1)] = cells[1].replace("\\|", "|").strip("`")
        tables[match.group(1)] = rows
    return tables


def reference_problems(text: str, classes: tuple[type, ...]) -> list[str]:
    """Everything wrong with the field reference; empty when it is in order."""
    tables = reference_tables(text)
    problems: list[str] = []
    for cls in classes:
        rows = tables.get(cls.__name__)
        if rows is None:
            problems.append(f"no field reference table for {cls.__name__}")
            continue
        members = public_members(cls)
        problems += [f"{cls.__name__}.{n} is not in the field reference" for n in sorted(set(members) - set(rows))]
        problems += [
            f"the field reference lists {cls.__name__}.{n}, which does not exist"
            for n in sorted(set(rows) - set(members))
        ]
        for name in sorted(set(members) & set(rows)):
            declared = members[name]
            if declared not in ("method", "property", "field") and rows[name] != declared:
                problems.append(f"{cls.__name__}.{name}: the reference says {rows[name]!r}, the code {declared!r}")
            if declared in ("method", "property") and rows[name] != declared:
                problems.append(f"{cls.__name__}.{name} is a {declared}, the reference says {rows[name]!r}")
    return problems


def test_the_field_reference_lists_every_public_member() -> None:
    assert reference_problems(guide(), REFERENCED) == []


def test_the_reference_checker_notices_missing_stale_and_wrong_rows() -> None:
    text = guide().replace("| `drained` | `bool` |", "| `drainedx` | `bool` |")
    problems = reference_problems(text, REFERENCED)
    assert "Outcome.drained is not in the field reference" in problems
    assert "the field reference lists Outcome.drainedx, which does not exist" in problems
    text = guide().replace("| `upstream_status` | `int \\| None` |", "| `upstream_status` | `int` |")
    assert "ProxyError.upstream_status: the reference says 'int', the code 'int | None'" in reference_problems(
        text, REFERENCED
    )
    text = guide().replace("| `with_json(payload)` | method |", "| `with_json(payload)` | property |")
    assert "SSEEvent.with_json is a method, the reference says 'property'" in reference_problems(text, REFERENCED)
    text = guide().replace("### UpstreamResponse\n", "### UpstreamAnswer\n")
    assert "no field reference table for UpstreamResponse" in reference_problems(text, REFERENCED)
