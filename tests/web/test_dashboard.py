"""`/dashboard` over HTTP: signing in with an API key, what the page shows, keys made and
revoked with CSRF-checked forms, another user's key out of reach, and the session ending when
its key is revoked."""

from __future__ import annotations

import re

import aiohttp

from tests.web.conftest import ADMIN_TOKEN, QUOTA_PER_USD, ConsoleFactory, browser_session


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


async def sign_in(s: aiohttp.ClientSession, url: str, key: str) -> aiohttp.ClientResponse:
    async with s.get(url + "/dashboard/login") as r:
        token = csrf(await r.text())
    async with s.post(url + "/dashboard/login", data={"csrf": token, "key": key}, allow_redirects=False) as r:
        await r.read()
        return r


async def test_the_dashboard_shows_the_users_money_requests_and_keys(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice", quota=3 * QUOTA_PER_USD)
    assert await c.chat(key) == 200
    user = await c.store.get_user("alice")
    assert user is not None
    async with browser_session() as s:
        async with s.get(c.url + "/dashboard", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/login?next=/dashboard"
        r = await sign_in(s, c.url, key)
        assert r.status == 303 and r.headers["Location"] == "/dashboard"
        async with s.get(c.url + "/dashboard") as r:
            html = await r.text()
    assert "Hello, alice" in html
    assert f"{user.balance:,} quota units" in html
    assert "completed" in html and "upstream" in html  # end_reason and usage_source of the request
    assert "mock-gpt" in html and "<svg" in html
    assert key not in html and ADMIN_TOKEN not in html


async def test_a_wrong_key_does_not_sign_in(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice")
    async with browser_session() as s:
        r = await sign_in(s, c.url, "wk-not-a-real-key-000000000000000000000000")
        assert r.status == 401
        async with s.get(c.url + "/dashboard", allow_redirects=False) as r:
            assert r.status == 303


async def test_keys_made_in_the_dashboard_are_shown_once(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    async with browser_session() as s:
        await sign_in(s, c.url, key)
        async with s.get(c.url + "/dashboard") as r:
            token = csrf(await r.text())
        async with s.post(c.url + "/dashboard/keys", data={"csrf": token, "name": "phone", "usd": "0.25"}) as r:
            html = await r.text()  # after the redirect: the page that shows the key once
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            assert [h.status for h in r.history] == [303]
        shown = re.search(r'<code class="secret">(wk-[^<]+)</code>', html)
        assert shown
        assert await c.chat(shown.group(1)) == 200
        async with s.get(c.url + "/dashboard") as r:
            assert shown.group(1) not in await r.text()  # never again
        async with s.post(c.url + "/dashboard/keys", data={"name": "no-token"}) as r:
            assert r.status == 403  # CSRF
    assert sorted(k.name for k in await c.store.list_keys("alice")) == ["main", "phone"]


async def test_another_users_key_cannot_be_revoked_from_the_dashboard(console: ConsoleFactory) -> None:
    c = await console()
    alice, bob = await c.user("alice"), await c.user("bob")
    bob_key = (await c.store.list_keys("bob"))[0]
    async with browser_session() as s:
        await sign_in(s, c.url, alice)
        async with s.get(c.url + "/dashboard") as r:
            token = csrf(await r.text())
        async with s.post(c.url + f"/dashboard/keys/{bob_key.id}/revoke", data={"csrf": token}) as r:
            assert r.status == 404
    assert await c.chat(bob) == 200


async def test_revoking_the_signed_in_key_ends_the_session(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    own = (await c.store.list_keys("alice"))[0]
    async with browser_session() as s:
        await sign_in(s, c.url, key)
        async with s.get(c.url + "/dashboard") as r:
            token = csrf(await r.text())
        async with s.post(c.url + f"/dashboard/keys/{own.id}/revoke", data={"csrf": token}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(c.url + "/dashboard", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/login?reason=ended"
    assert await c.chat(key) == 403


async def test_a_hostile_user_name_is_shown_as_text(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("<script>alert(1)</script>")
    async with browser_session() as s:
        await sign_in(s, c.url, key)
        async with s.get(c.url + "/dashboard") as r:
            html = await r.text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_a_dashboard_session_is_not_an_admin_session(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    async with browser_session() as s:
        await sign_in(s, c.url, key)
        for path in ("/admin", "/admin/users", "/admin/logs"):
            async with s.get(c.url + path, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/admin/login"), path
        async with s.get(
            c.url + "/admin/users", headers={"Authorization": f"Bearer {key}"}, allow_redirects=False
        ) as r:
            assert r.status == 303  # a user key as Bearer is no console session either
        user = (await c.store.list_keys("alice"))[0]
        forged = next(ck.value for ck in s.cookie_jar if ck.key == "weir_user")
        async with aiohttp.ClientSession() as other:
            async with other.get(
                c.url + "/admin", headers={"Cookie": f"weir_admin={forged}"}, allow_redirects=False
            ) as r:
                assert r.status == 303  # the user realm's cookie does not open the admin realm
    assert user.status == "active"
