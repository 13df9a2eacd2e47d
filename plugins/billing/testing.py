"""Billing's test harness for plugin authors, shipped as a pytest plugin (entry point
`pytest11`, name `weir_billing`), next to the core's `proxy.testing`.

Fixture:
  * `billing_proxy`: `billed = await billing_proxy(plugins=[MyPlugin()])` starts a real Weir
    in front of `fake_upstream` with the chain `[billing, MyPlugin]` (SQLite in `tmp_path`),
    a user funded with `quota` units and one key for it; it returns a `BilledProxy`.
    At the end of the test every proxy it started must pass `weir audit` (balances equal
    their ledgers, no orphaned hold).

A test of a plugin together with billing reads what money moved::

    async def test_redaction_is_billed_once(billing_proxy, fake_upstream):
        fake_upstream.script(reply=["a", "b"], usage=Usage(input=10, output=2))
        billed = await billing_proxy(plugins=[RedactEmails()])
        assert (await billed.chat("hi", stream=True)).status == 200
        assert await billed.spent() == 10 * 1 + 2 * 4     # DEFAULT_PRICES: 1 and 4 units a token
        assert await billed.open_holds() == []

See docs/plugins.md, "Testing with billing".
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.plugin import Plugin
from proxy.testing import Answer, ProxyHandle

if TYPE_CHECKING:
    from plugins.billing.store.base import AuditReport, Hold, LogRow, Store, User

try:
    import pytest_asyncio

    _async_fixture: Any = pytest_asyncio.fixture
except ImportError:  # the harness needs pytest-asyncio; without it the fixture is absent
    _async_fixture = None

__all__ = ["DEFAULT_PRICES", "DEFAULT_QUOTA", "BilledProxy", "start_billed"]

DEFAULT_PRICES: dict[str, Any] = {"*": {"input": 2, "output": 8}}
"""USD per million tokens for every model: at the default 500,000 quota units per USD, an
input token costs 1 unit and an output token 4, so charges are easy to reckon in a test."""
DEFAULT_QUOTA = 500_000
"""The funded user's starting balance in quota units ($1 at the default rate)."""


@dataclass(slots=True)
class BilledProxy:
    """A running Weir with billing, one funded user and the clear text of their key."""

    proxy: ProxyHandle
    user: str
    key: str
    key_id: str
    funded: int

    @property
    def store(self) -> Store:
        """Billing's store (the ledger), as billing published it."""
        store: Store = self.proxy.store
        return store

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return self.proxy.url

    @property
    def headers(self) -> dict[str, str]:
        """The user's credentials, as a client sends them."""
        return {"Authorization": f"Bearer {self.key}"}

    async def chat(self, content: str = "hi", **kw: Any) -> Answer:
        """`ProxyHandle.chat` with the user's key (more `headers=` are added to it)."""
        headers = {**self.headers, **(kw.pop("headers", None) or {})}
        return await self.proxy.chat(content, headers=headers, **kw)

    async def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Answer:
        """`ProxyHandle.post` with the user's key."""
        return await self.proxy.post(path, json, {**self.headers, **(headers or {})})

    async def account(self) -> User:
        """The user's record once settlement is done: balance, reserved, used, requests."""
        await self.proxy.settled()
        user = await self.store.get_user(self.user)
        if user is None:
            raise LookupError(f"user {self.user!r} is gone")
        return user

    async def balance(self) -> int:
        """The user's balance once settlement is done."""
        return (await self.account()).balance

    async def spent(self) -> int:
        """What the user was charged since funding (the funding less the balance)."""
        return self.funded - await self.balance()

    async def open_holds(self) -> list[Hold]:
        """The user's holds still open once settlement is done (a settled test has none)."""
        await self.proxy.settled()
        return [h for h in await self.store.open_holds() if h.user == self.user]

    async def logs(self, limit: int = 50) -> list[LogRow]:
        """The user's consume-log rows, newest first."""
        await self.proxy.settled()
        return await self.store.query_logs(user=self.user, limit=limit)

    async def audit(self) -> AuditReport:
        """`weir audit` of the whole store, once settlement is done."""
        await self.proxy.settled()
        return await self.store.audit(time.time(), 30.0)


async def start_billed(
    make_proxy: Callable[..., Awaitable[ProxyHandle]],
    plugins: Sequence[Plugin] = (),
    *,
    quota: int = DEFAULT_QUOTA,
    key_quota: int | None = None,
    user: str = "alice",
    prices: dict[str, Any] | None = None,
    billing_at: int = 0,
    store: dict[str, Any] | None = None,
    **billing: Any,
) -> BilledProxy:
    """Start Weir with billing at position `billing_at` of `plugins`, fund `user` with
    `quota` units and give them a key (`key_quota`: a limited key). `billing` keys are
    `BillingConfig` fields; `store` replaces proxy.yaml's `store:` (e.g. a Redis URL)."""
    # Imported here, not at the top: pytest loads this module at startup for every suite.
    from plugins.billing.apikeys import generate_key
    from plugins.billing.config import BillingConfig
    from plugins.billing.plugin import BillingPlugin

    config = BillingConfig(**{"pricing": {"models": prices or DEFAULT_PRICES}, **billing})
    chain = list(plugins)
    chain.insert(billing_at, BillingPlugin(config))
    proxy = await make_proxy(plugins=chain, **({"store": store} if store else {}))
    ledger: Store = proxy.store
    await ledger.create_user(user)
    if quota:
        await ledger.credit(user, quota, note="test funding")
    clear, digest, hint = generate_key()
    key = await ledger.create_key(user, digest, name="test", quota=key_quota, hint=hint)
    return BilledProxy(proxy, user, clear, key.id, quota)


if _async_fixture is not None:

    @_async_fixture  # type: ignore[untyped-decorator]
    async def billing_proxy(
        make_proxy: Callable[..., Awaitable[ProxyHandle]],
    ) -> AsyncIterator[Callable[..., Awaitable[BilledProxy]]]:
        """Factory: `await billing_proxy(plugins=[...], quota=..., **billing_config)`;
        every proxy it started must pass the audit when the test ends."""
        started: list[BilledProxy] = []

        async def factory(plugins: Sequence[Plugin] = (), **options: Any) -> BilledProxy:
            billed = await start_billed(make_proxy, plugins, **options)
            started.append(billed)
            return billed

        yield factory
        for billed in started:
            report = await billed.audit()
            assert report.ok, f"weir audit failed after the test: {report}"
