"""Keeps docs/plugins.md honest about the hooks of `proxy.plugin.Plugin`.

A hook is every public method defined on `Plugin` plus every name in `proxy.pipeline.HOOKS`.
Each must have a docstring in proxy/plugin.py and one `### `name`` section in the guide,
whose first code block shows its real signature and which says when it fires, its order,
what it may mutate and its error policy, with an example. A `### `name`` heading for
anything that is not a hook is a stale section. The checkers are plain functions so the
tests below can also prove that they notice a missing or stale section.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from proxy.pipeline import HOOKS
from proxy.plugin import Plugin

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = re.compile(r"^### `([^`]+)`[ \t]*$", re.M)
CODE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PARTS = ("**When:**", "**Order:**", "**May mutate:**", "**Errors:**")


def plugin_methods() -> set[str]:
    """The public methods defined on `Plugin` itself."""
    return {
        name
        for name, value in vars(Plugin).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


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
        body = re.split(r"^## ", text[match.end():end], maxsplit=1, flags=re.M)[0]
        found.setdefault(match.group(1), []).append(body)
    return found


def section_problems(text: str, hooks: set[str]) -> list[str]:
    """Everything wrong with the guide's hook sections; empty when it is in order."""
    found = sections(text)
    problems = [f"no section for hook {name!r}" for name in sorted(hooks - set(found))]
    problems += [f"section for {name!r}, which is not a hook of Plugin" for name in sorted(set(found) - hooks)]
    problems += [f"{len(bodies)} sections for hook {name!r}" for name, bodies in sorted(found.items()) if len(bodies) > 1]
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
    assert "section for 'on_error', which is not a hook of Plugin" in section_problems(text, public_hooks() - {"on_error"})


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
