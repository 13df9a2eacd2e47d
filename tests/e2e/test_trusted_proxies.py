"""IP allowlists behind a reverse proxy: `server.trusted_proxies` through a real Weir.

The test client connects from 127.0.0.1, so it plays the part of nginx on the same host.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from plugins.billing.apikeys import generate_key
from proxy.app import HANDLER
from tests.e2e.conftest import Billed, BilledFactory

CLIENT = "198.51.100.7"  # the key's allowlisted address
STRANGER = "203.0.113.5"
CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "mock-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


async def allowlisted_key(b: Billed) -> str:
    """A new key of the funded user that may only be used from CLIENT."""
    clear, digest, _ = generate_key()
    await b.store.create_key(b.user, digest, name="office", ips=(f"{CLIENT}/32",))
    return clear


async def post(b: Billed, key: str, forwarded_for: str, anthropic: bool = False) -> tuple[int, dict[str, Any]]:
    """POST a chat (OpenAI) or message (Anthropic) request with one X-Forwarded-For header."""
    path, body = ("/v1/messages", MESSAGES) if anthropic else ("/v1/chat/completions", CHAT)
    headers = {
        "x-api-key" if anthropic else "Authorization": key if anthropic else f"Bearer {key}",
        "X-Forwarded-For": forwarded_for,
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(b.proxy.url + path, json=body, headers=headers) as r:
            return r.status, orjson.loads(await r.read())


async def state(b: Billed) -> tuple[int, int, int]:
    """(balance, reserved, upstream requests seen), once every settlement has landed."""
    await b.proxy.settled()
    user = await b.store.get_user(b.user)
    assert user is not None
    assert await b.store.open_holds() == []
    return user.balance, user.reserved, len(b.upstream.requests)


def refused(status: int, body: dict[str, Any], anthropic: bool = False) -> bool:
    """A 403 `ip_not_allowed` in the dialect's shape."""
    if anthropic:
        return status == 403 and body["type"] == "error" and body["error"]["type"] == "permission_error"
    return status == 403 and body["error"]["code"] == "ip_not_allowed"


async def test_without_trusted_proxies_the_header_is_ignored(billed: BilledFactory) -> None:
    b = await billed()
    key = await allowlisted_key(b)
    before = await state(b)
    for anthropic in (False, True):
        status, body = await post(b, key, CLIENT, anthropic)
        assert refused(status, body, anthropic), body
    assert await state(b) == before  # no hold, no charge, nothing sent upstream


async def test_a_trusted_proxy_names_the_client(billed: BilledFactory, capsys: pytest.CaptureFixture[str]) -> None:
    b = await billed(server={"trusted_proxies": ["127.0.0.1/32"], "access_log": True})
    key = await allowlisted_key(b)
    balance, _, sent = await state(b)
    status, body = await post(b, key, CLIENT)
    assert status == 200 and body["choices"][0]["message"]["content"]
    charged = await state(b)
    assert charged[0] < balance and charged[2] == sent + 1
    status, body = await post(b, key, STRANGER)
    assert refused(status, body), body
    assert await state(b) == charged
    access = b.proxy.app[HANDLER].access
    assert access is not None
    access.flush()  # written once a second otherwise
    lines = [line for line in capsys.readouterr().err.splitlines() if " weir.access: " in line]
    assert f"client={CLIENT} " in lines[0] and "status=200" in lines[0]
    assert f"client={STRANGER} " in lines[1] and "status=403" in lines[1]


async def test_a_spoofed_leftmost_entry_is_ignored(billed: BilledFactory) -> None:
    b = await billed(server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]})
    key = await allowlisted_key(b)
    before = await state(b)
    # The stranger sent "X-Forwarded-For: CLIENT"; the proxy appended the address it saw.
    for anthropic in (False, True):
        status, body = await post(b, key, f"{CLIENT}, {STRANGER}", anthropic)
        assert refused(status, body, anthropic), body
    assert await state(b) == before
    # The real client behind two trusted proxies, with a spoofed entry of its own in front.
    status, body = await post(b, key, f"{STRANGER}, {CLIENT}, 10.1.1.1")
    assert status == 200, body
    after = await state(b)
    assert after[0] < before[0] and after[2] == before[2] + 1
