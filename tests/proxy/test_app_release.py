"""A stopped app is garbage: nothing process-wide (such as `gc.freeze()` at startup, which
`weir serve` does but `create_app` must not) may keep it alive, or every app a process builds
(the suite builds hundreds) leaks its plugins' vocabularies, price tables and store."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.tokenizer import Family
from proxy.mock.upstream import MockUpstream
from proxy.testing import proxy_config, start_proxy


async def test_a_stopped_app_releases_its_plugins(fake_upstream: MockUpstream, tmp_path: Path) -> None:
    config = proxy_config(fake_upstream.url, tmp_path)
    plugin = BillingPlugin(BillingConfig(pricing={"models": {"mock-gpt": {"input": 1, "output": 1}}}))
    handle = await start_proxy(config, plugins=[plugin])
    encodings = [plugin.tokenizer.encoding(f) for f in (Family.O200K, Family.CL100K)]  # loaded here (on first use)
    refs = [weakref.ref(o) for o in (handle.app, plugin, *encodings)]
    await handle.stop()
    del handle, plugin, encodings
    gc.collect()
    assert [r() for r in refs if r() is not None] == []
