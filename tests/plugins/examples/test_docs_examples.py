"""docs/plugins.md's example plugins (an e-mail redactor, a limits plugin), run with the
harness exactly as the page shows them.

The plugins are loaded from the page's `<!-- example: NAME -->` blocks; each test below
is the page's `<!-- test: NAME -->` block word for word (`test_the_page_shows_these_tests`
holds the two together), so the guide cannot drift from what Weir does.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

from proxy.testing import Usage

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"
BLOCK = re.compile(r"^<!-- (example|test): ([\w-]+) -->\n```python\n(.*?)^```", re.M | re.S)


def blocks(kind: str) -> dict[str, str]:
    """The page's marked python blocks of `kind` (example or test), by name."""
    return {name: code for k, name, code in BLOCK.findall(GUIDE.read_text("utf-8")) if k == kind}


def docs_example(name: str) -> types.ModuleType:
    """The page's `<!-- example: name -->` block, run as a module of its own."""
    module = types.ModuleType(f"docs_example_{name}")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the block runs
    exec(compile(blocks("example")[name], f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


RedactEmails = docs_example("redact_emails").RedactEmails
_limits = docs_example("limits")
Limits, LimitsConfig = _limits.Limits, _limits.LimitsConfig


async def test_masks_an_email_split_across_two_events(make_proxy, fake_upstream):
    fake_upstream.script(reply=["Write to bob@exa", "mple.com today"])
    proxy = await make_proxy(plugins=[RedactEmails()])
    answer = await proxy.chat("hi", stream=True)
    assert answer.text == "Write to [email] today"
    assert b"bob" not in b"".join(e.raw for e in answer.events)


async def test_caps_max_tokens_and_passes_on_the_budget(make_proxy, fake_upstream):
    fake_upstream.script(headers={"x-ratelimit-remaining-requests": "41"})
    proxy = await make_proxy(plugins=[Limits(LimitsConfig(max_tokens=64))])
    ok = await proxy.chat("hi")
    assert ok.status == 200 and ok.headers["x-upstream-remaining"] == "41"
    assert fake_upstream.requests[-1].json["max_tokens"] == 64
    refused = await proxy.chat("hi", max_tokens=65)
    assert refused.status == 400 and refused.error["code"] == "max_tokens_too_large"
    assert len(fake_upstream.requests) == 1  # the refused request never left


async def test_billing_charges_what_the_upstream_reported(billing_proxy, fake_upstream):
    fake_upstream.script(reply=["Mail bob@exa", "mple.com"], usage=Usage(input=10, output=2))
    billed = await billing_proxy(plugins=[RedactEmails()])
    answer = await billed.chat("hi", stream=True)
    assert answer.text == "Mail [email]"
    assert await billed.spent() == 10 * 1 + 2 * 4
    assert await billed.open_holds() == []
    assert (await billed.logs())[0].charge == 18


def test_the_page_shows_these_tests() -> None:
    source = inspect.getsource(sys.modules[__name__])
    shown = blocks("test")
    assert set(shown) == {"redact_emails", "limits", "billing"}
    for name, code in shown.items():
        assert code in source, f"docs/plugins.md's {name!r} test differs from the one run here"
    for name, code in shown.items():
        assert len(code.strip().splitlines()) <= 15, f"the {name!r} test is longer than 15 lines"
