"""`GET /api/pricing` (public) and the price editor's API (`/api/admin/prices...`) against a
real proxy with billing, on both stores: what is listed and how it is priced, versions
(stale base 409, concurrent saves, rollback) and money charged right after a save."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.plugins.billing.pricing_world import ADMIN, PRICES, Shop, ShopFactory, backend, shop  # noqa: F401

UPSTREAMS = [
    {"name": "alpha", "models": ["mock-*", "gpt-4o-mini"]},
    {
        "name": "beta",
        "type": "anthropic",
        "base_url": "http://127.0.0.1:9",
        "models": ["mystery-model", "claude-*"],
        "model_map": {"claude-latest": "claude-sonnet-4-5"},
    },
]
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def call(
    world: Shop, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None, i: int = 0
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, world.instances[i].url + path, json=json, headers=headers) as r:
            return r.status, await r.json(content_type=None)


async def test_the_public_price_list(shop: ShopFactory) -> None:
    world = await shop(
        upstreams=UPSTREAMS, groups={"default": 1, "vip": "0.8"}, pricing={"fallback": "litellm", "models": PRICES}
    )
    status, body = await call(world, "GET", "/api/pricing")  # no key: public
    assert status == 200
    models = {m["model"]: m for m in body["models"]}
    assert models["mock-image"]["source"] == "configured" and models["mock-image"]["price"] == {"per_request": "0.04"}
    assert models["mock-image"]["groups"] == {"default": {"per_request": "0.04"}, "vip": {"per_request": "0.032"}}
    gpt = models["mock-gpt*"]
    assert gpt["pattern"] and gpt["source"] == "configured" and gpt["unit"] == "per_1m_tokens"
    assert (gpt["price"]["input"], gpt["price"]["cache_write"], gpt["groups"]["vip"]["output"]) == (
        "0.15",
        "0.1875",
        "0.48",
    )
    ref = models["gpt-4o-mini"]
    assert (ref["source"], ref["matched"], ref["price"]["input"]) == ("reference", "litellm:gpt-4o-mini", "0.15")
    assert "chat" in ref["capabilities"] and "vision" in ref["capabilities"]
    assert body["reference"]["label"] == "LiteLLM reference price" and body["reference"]["date"]
    assert models["mystery-model"]["source"] == "unpriced" and models["mystery-model"]["price"] is None
    assert models["claude-*"]["source"] == "reference" and models["claude-*"]["price"] is None
    assert models["claude-latest"]["upstreams"] == ["beta"] and models["mock-*"]["upstreams"] == ["alpha"]
    channels = {c["upstream"]: c for c in body["channels"]}
    assert {m["model"] for m in channels["beta"]["models"]} == {"mystery-model", "claude-*", "claude-latest"}
    assert channels["alpha"]["health"] == "unknown" and channels["beta"]["type"] == "anthropic"
    assert channels["alpha"]["models"][0]["groups"] == ["default", "vip"]

    await world.image()  # a billed request through alpha: its health is now known
    _, body = await call(world, "GET", "/api/pricing?q=IMAGE&group=vip")
    assert [m["model"] for m in body["models"]] == ["mock-image"] and body["groups"] == {"vip": "0.8"}
    assert {c["upstream"]: c["health"] for c in body["channels"]} == {"alpha": "ok", "beta": "unknown"}
    _, body = await call(world, "GET", "/api/pricing?provider=anthropic&source=unpriced")
    # Prices follow the name the client sends: claude-latest is not claude-sonnet-4-5's price.
    assert [m["model"] for m in body["models"]] == ["claude-latest", "mystery-model"]
    _, body = await call(world, "GET", "/api/pricing?capability=vision")
    assert [m["model"] for m in body["models"]] == ["gpt-4o-mini"]
    _, body = await call(world, "GET", "/api/pricing?sort=input&order=desc&source=configured")
    assert [m["model"] for m in body["models"]][:2] == ["mock-gpt*", "mock-embed"]
    status, body = await call(world, "GET", "/api/pricing?sort=price")
    assert (
        status == 400 and body["error"]["code"] == "invalid_query" and "sort must be one of" in body["error"]["message"]
    )


async def test_the_price_list_can_be_turned_off(shop: ShopFactory) -> None:
    world = await shop(pricing_page=False)
    status, body = await call(world, "GET", "/api/pricing")
    assert status == 404 and "pricing_page: false" in body["error"]["message"]


async def test_the_admin_api_needs_the_admin_token(shop: ShopFactory) -> None:
    world = await shop()
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Bearer {world.key}"}):
        status, body = await call(world, "GET", "/api/admin/prices", headers=headers)
        assert status == 401 and body["error"]["code"] in ("admin_token_required", "invalid_admin_token")
        status, _ = await call(
            world, "PUT", "/api/admin/prices", json={"base_version": 1, "models": {}}, headers=headers
        )
        assert status == 401
    assert await world.store.price_head() == 1


async def test_versions_stale_base_concurrent_saves_and_rollback(shop: ShopFactory) -> None:
    world = await shop(instances=2)
    status, state = await call(world, "GET", "/api/admin/prices", headers=AUTH)
    assert status == 200 and state["version"] == 1 and state["models"]["mock-image"] == {"per_request": "0.04"}
    dearer = {**state["models"], "mock-image": {"per_request": 0.05}}  # a JSON number, read as Decimal
    status, body = await call(
        world, "PUT", "/api/admin/prices", json={"base_version": 1, "models": dearer}, headers=AUTH
    )
    assert (status, body["version"]) == (200, 2), body
    assert await world.image(0) == 25_000  # charged right after the save, on the saving instance

    # Two editors who both loaded version 2: one save wins, the other is told it is stale.
    edits = [{**dearer, "mock-image": {"per_request": p}} for p in ("0.06", "0.07")]
    results = await asyncio.gather(
        *(
            call(world, "PUT", "/api/admin/prices", json={"base_version": 2, "models": m}, headers=AUTH, i=i)
            for i, m in enumerate(edits)
        )
    )
    assert sorted(s for s, _ in results) == [200, 409]
    stale = next(b for s, b in results if s == 409)
    assert stale["error"]["code"] == "stale_base_version" and "version 3 is newer" in stale["error"]["message"]
    assert await world.store.price_head() == 3

    status, body = await call(
        world, "POST", "/api/admin/prices/rollback", json={"version": 1, "base_version": 2}, headers=AUTH
    )
    assert status == 409
    status, body = await call(
        world, "POST", "/api/admin/prices/rollback", json={"version": 1, "base_version": 3}, headers=AUTH
    )
    assert (status, body["version"]) == (200, 4)
    assert await world.image(0) == 20_000  # rollback restores the old price
    status, listing = await call(world, "GET", "/api/admin/prices/versions", headers=AUTH)
    assert [(v["version"], v["source"]) for v in listing["versions"]][:2] == [(4, "rollback"), (3, "api")]
    status, one = await call(world, "GET", "/api/admin/prices/versions/2", headers=AUTH)
    assert one["models"]["mock-image"] == {"per_request": "0.05"}
    status, _ = await call(world, "GET", "/api/admin/prices/versions/99", headers=AUTH)
    assert status == 404


async def test_conflicts_block_a_save_unless_confirmed(shop: ShopFactory) -> None:
    world = await shop()
    free = {**PRICES, "mock-embed": {"input": 0, "output": 0}}
    status, body = await call(world, "PUT", "/api/admin/prices", json={"base_version": 1, "models": free}, headers=AUTH)
    assert status == 422 and body["error"]["code"] == "price_conflicts" and "costs nothing" in body["error"]["message"]
    assert await world.store.price_head() == 1
    status, body = await call(
        world,
        "PUT",
        "/api/admin/prices",
        json={"base_version": 1, "models": free, "confirm": True, "note": "embeddings free"},
        headers=AUTH,
    )
    assert (status, body["version"]) == (200, 2)
    both = {**PRICES, "mock-image": {"per_request": 1, "input": 1, "output": 1}}
    status, body = await call(
        world, "PUT", "/api/admin/prices", json={"base_version": 2, "models": both, "confirm": True}, headers=AUTH
    )
    assert status == 422 and "cannot be saved" in body["error"]["message"] and "mock-image" in body["error"]["message"]
    status, body = await call(
        world,
        "PUT",
        "/api/admin/prices",
        json={"base_version": 2, "models": {"m": {"input": "x", "output": 1}}, "confirm": True},
        headers=AUTH,
    )
    assert status == 400 and body["error"]["code"] == "invalid_prices" and "m.input" in body["error"]["message"]
    status, body = await call(world, "PUT", "/api/admin/prices", json={"models": PRICES}, headers=AUTH)
    assert status == 400 and "base_version" in body["error"]["message"]
    assert await world.store.price_head() == 2


async def test_preview_and_import_ratios(shop: ShopFactory) -> None:
    world = await shop()
    pending = {**PRICES, "mock-image": {"per_request": "0.05"}}
    status, body = await call(world, "POST", "/api/admin/prices/preview", json={"models": pending}, headers=AUTH)
    assert status == 200 and [c["text"] for c in body["changes"]] == ["~ mock-image: per_request 0.04 → 0.05"]
    assert body["error"] is None and body["base_version"] == 1
    export = {"model_ratio": '{"gpt-4o": 1.25}', "completion_ratio": {"gpt-4o": 4}, "model_price": {"mock-image": 0.1}}
    status, body = await call(world, "POST", "/api/admin/prices/import-ratios", json={"export": export}, headers=AUTH)
    assert status == 200, body
    assert body["models"]["gpt-4o"] == {"input": "2.5", "output": "10"}
    assert body["models"]["mock-image"] == {"per_request": "0.1"} and body["models"]["mock-embed"]  # others kept
    assert {c["text"] for c in body["changes"]} == {
        "+ gpt-4o: input 2.5, output 10",
        "~ mock-image: per_request 0.04 → 0.1",
    }
    assert await world.store.price_head() == 1  # an import is a proposal until it is saved
