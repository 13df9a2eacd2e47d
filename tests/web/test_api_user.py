"""The user API (`/api/me`, `/api/me/logs`, `/api/me/keys`) against a real Weir with billing:
auth (none, wrong, revoked, the admin token), only the caller's own data (BOLA), keys made
and revoked, validation errors with a code."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.web.conftest import ADMIN_TOKEN, QUOTA_PER_USD, ConsoleFactory


async def call(url: str, key: str | None, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body, headers=headers) as r:
            return r.status, await r.json()


async def test_me_shows_the_callers_own_totals_and_key(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice", quota=2 * QUOTA_PER_USD)
    assert await c.chat(key) == 200
    status, me = await call(c.url + "/api/me", key)
    assert status == 200
    user = await c.store.get_user("alice")
    assert user is not None and user.used > 0
    assert me["user"]["name"] == "alice"
    assert me["user"]["balance_quota"] == user.balance == 2 * QUOTA_PER_USD - user.used
    assert me["user"]["reserved_quota"] == 0 and me["user"]["used_quota"] == user.used
    assert me["key"]["name"] == "main" and me["key"]["request_count"] == 1
    assert me["manages_account"] is True
    assert key not in str(me)  # the key itself is never echoed


async def test_auth_is_required_and_checked(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    for who, code in (
        (None, "invalid_api_key"),
        ("wk-not-a-real-key-000000000000000000000000", "invalid_api_key"),
        (ADMIN_TOKEN, "invalid_api_key"),
    ):
        status, body = await call(c.url + "/api/me", who)
        assert status == 401 and body["error"]["code"] == code, who
    keys = await c.store.list_keys("alice")
    await c.store.set_key_status(keys[0].id, "disabled")
    status, body = await call(c.url + "/api/me", key)
    assert status == 403 and body["error"]["code"] == "key_disabled"
    other = await c.key("alice", name="second")
    await c.store.set_user("alice", disabled=True)
    status, body = await call(c.url + "/api/me/keys", other, "POST", {"name": "sneaky"})
    assert status == 403 and body["error"]["code"] == "user_disabled"


async def test_logs_show_only_the_callers_requests_without_upstream_details(console: ConsoleFactory) -> None:
    c = await console()
    alice, bob = await c.user("alice"), await c.user("bob")
    for _ in range(3):
        assert await c.chat(alice) == 200
    assert await c.chat(bob) == 200
    status, body = await call(c.url + "/api/me/logs?limit=2", alice)
    assert status == 200
    assert [r["user"] for r in body["logs"]] == ["alice", "alice"]
    assert body["next_before"] == body["logs"][-1]["id"]
    first = body["logs"][0]
    assert first["end_reason"] == "completed" and first["usage_source"] == "upstream"
    assert "upstream" not in first and "upstream_model" not in first
    status, more = await call(c.url + f"/api/me/logs?before={body['next_before']}", alice)
    assert [r["user"] for r in more["logs"]] == ["alice"] and more["next_before"] is None
    status, body = await call(c.url + "/api/me/logs?limit=0", alice)
    assert status == 400 and body["error"]["code"] == "invalid_number"
    status, body = await call(c.url + "/api/me/logs?since=yesterday", alice)
    assert status == 400 and body["error"]["code"] == "invalid_time"


async def test_keys_are_made_shown_once_and_revoked(console: ConsoleFactory) -> None:
    c = await console()
    alice = await c.user("alice")
    status, made = await call(
        c.url + "/api/me/keys", alice, "POST", {"name": "laptop", "usd": "0.50", "models": ["mock-*"]}
    )
    assert status == 201, made
    assert made["key"].startswith("wk-") and made["quota"] == QUOTA_PER_USD // 2 and made["models"] == ["mock-*"]
    assert await c.chat(made["key"]) == 200  # the new key works
    status, listed = await call(c.url + "/api/me/keys", alice)
    assert sorted(k["name"] for k in listed["keys"]) == ["laptop", "main"]
    assert made["key"] not in str(listed)  # shown once only
    status, done = await call(c.url + f"/api/me/keys/{made['id']}", alice, "DELETE")
    assert status == 200 and done["status"] == "revoked"
    assert await c.chat(made["key"]) == 403  # refused from now on


async def test_a_user_cannot_reach_another_users_keys_by_id(console: ConsoleFactory) -> None:
    c = await console()
    alice, bob = await c.user("alice"), await c.user("bob")
    bob_key = (await c.store.list_keys("bob"))[0]
    status, body = await call(c.url + f"/api/me/keys/{bob_key.id}", alice, "DELETE")
    assert status == 404 and body["error"]["code"] == "unknown_key"
    assert (await c.store.get_key(bob_key.id)).status == "active"  # type: ignore[union-attr]
    assert await c.chat(bob) == 200
    status, listed = await call(c.url + "/api/me/keys", alice)
    assert all(k["user"] == "alice" for k in listed["keys"])


async def test_a_limited_key_sees_its_own_requests_and_manages_no_keys(console: ConsoleFactory) -> None:
    c = await console()
    full = await c.user("alice")
    limited = await c.key("alice", name="teammate", quota=QUOTA_PER_USD)
    assert await c.chat(full) == 200 and await c.chat(limited) == 200
    status, me = await call(c.url + "/api/me", limited)
    assert me["manages_account"] is False
    status, body = await call(c.url + "/api/me/logs", limited)
    assert [r["key_name"] for r in body["logs"]] == ["teammate"]
    status, body = await call(c.url + "/api/me/keys", limited)
    assert [k["name"] for k in body["keys"]] == ["teammate"]
    status, body = await call(c.url + "/api/me/keys", limited, "POST", {"name": "escalate"})
    assert status == 403 and body["error"]["code"] == "key_not_allowed"
    assert len(await c.store.list_keys("alice")) == 2


async def test_key_creation_validates_its_input(console: ConsoleFactory) -> None:
    c = await console()
    alice = await c.user("alice")
    for body, code in (
        ({"usd": "lots"}, "invalid_amount"),
        ({"quota": -5}, "invalid_number"),
        ({"usd": "1", "quota": 5}, "invalid_amount"),
        ({"group": "vip"}, "unknown_field"),
        ({"expires": "2001-01-01"}, "invalid_time"),
        ({"name": " padded "}, "invalid_name"),
        ({"models": "a,,b"}, "invalid_list"),
    ):
        status, answer = await call(c.url + "/api/me/keys", alice, "POST", body)
        assert status == 400 and answer["error"]["code"] == code, body
    async with aiohttp.ClientSession() as s:
        async with s.post(c.url + "/api/me/keys", data=b"[1,", headers={"Authorization": f"Bearer {alice}"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    assert len(await c.store.list_keys("alice")) == 1
