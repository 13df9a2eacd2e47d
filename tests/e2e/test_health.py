"""`/healthz` with billing: the core reports the health checks plugins register, and billing
registers its store's."""

from __future__ import annotations

import aiohttp

from tests.e2e.conftest import BilledFactory


async def test_healthz_reports_billings_store(billed: BilledFactory) -> None:
    """With the store answering: 200, `store: true`; with it closed under the running proxy
    (what a dead store looks like to `ping`): 503 `degraded`, `store: false`."""
    b = await billed()
    async with aiohttp.ClientSession() as s:
        async with s.get(b.proxy.url + "/healthz") as r:
            body = await r.json()
            assert (r.status, body["status"], body["store"]) == (200, "ok", True)
            assert body["instance"]
        await b.store.close()
        try:
            async with s.get(b.proxy.url + "/healthz") as r:
                assert (r.status, (await r.json())["status"], (await r.json())["store"]) == (503, "degraded", False)
        finally:
            await b.store.open()
