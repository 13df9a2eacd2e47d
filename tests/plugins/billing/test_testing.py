"""Billing's shipped harness (`plugins.billing.testing`): `billing_proxy` and `BilledProxy`,
through a real Weir, the real billing plugin and a real store."""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path
from typing import Any

import openai

from plugins.billing.testing import BilledProxy
from proxy.plugin import Plugin, Reject, RequestContext
from proxy.testing import MockUpstream, Usage

ROOT = Path(__file__).resolve().parents[3]
Factory = Any  # the billing_proxy fixture


class RefuseAll(Plugin):
    """Refuses every request in `on_request`."""

    name = "refuse_all"

    async def on_request(self, ctx: RequestContext) -> None:
        raise Reject(403, "no", "refused by the plugin under test")


async def test_a_charge_moves_the_balance_once_and_leaves_no_hold(
    billing_proxy: Factory, fake_upstream: MockUpstream
) -> None:
    fake_upstream.script(usage=Usage(input=100, output=5))
    billed: BilledProxy = await billing_proxy()
    answer = await billed.chat("hi")
    assert answer.status == 200
    assert await billed.spent() == 100 + 5 * 4
    account = await billed.account()
    assert (account.reserved, account.used, account.request_count) == (0, 120, 1)
    assert await billed.open_holds() == []
    [row] = await billed.logs()
    assert (row.charge, row.key_id) == (120, billed.key_id)
    assert (await billed.audit()).ok


async def test_an_unfunded_user_is_refused_and_charged_nothing(billing_proxy: Factory) -> None:
    billed: BilledProxy = await billing_proxy(quota=0)
    refused = await billed.chat("hi")
    assert refused.status == 402
    assert refused.error is not None and refused.error["code"] == "insufficient_quota"
    assert await billed.balance() == 0
    assert await billed.logs() == []


async def test_billing_at_places_billing_in_the_chain(billing_proxy: Factory, fake_upstream: MockUpstream) -> None:
    first: BilledProxy = await billing_proxy(plugins=[RefuseAll()])
    assert (await first.chat("hi")).status == 403  # billing held, then released
    second: BilledProxy = await billing_proxy(plugins=[RefuseAll()], billing_at=1, user="bob")
    assert (await second.chat("hi")).status == 403  # billing never saw it
    assert [r.details.end_reason for r in await first.logs()] == ["rejected"]
    assert await second.logs() == []
    assert await first.spent() == await second.spent() == 0
    assert fake_upstream.requests == []


async def test_the_key_works_with_the_sdk_and_a_redis_store(
    billing_proxy: Factory, fake_upstream: MockUpstream, redis_url: str
) -> None:
    store = {"backend": "redis", "url": redis_url, "prefix": f"weirtest:{uuid.uuid4().hex[:10]}"}
    billed: BilledProxy = await billing_proxy(store=store, key_quota=50_000)
    fake_upstream.script(reply="a b", usage=Usage(input=10, output=2))
    client = openai.AsyncOpenAI(base_url=billed.proxy.openai_base, api_key=billed.key, max_retries=0)
    reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=10)
    await client.close()
    assert reply.choices[0].message.content == "a b"
    assert await billed.spent() == 18
    assert type(billed.store).__name__ == "RedisStore"
    await billed.store.drop_all()  # type: ignore[attr-defined]


def test_the_harness_ships_with_its_types() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert project["project"]["entry-points"]["pytest11"] == {
        "weir": "proxy.testing",
        "weir_billing": "plugins.billing.testing",
    }
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["*"]
    assert (ROOT / "proxy" / "py.typed").is_file() and (ROOT / "plugins" / "py.typed").is_file()
