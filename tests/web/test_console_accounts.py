"""The console's account pages over HTTP: add a user, top up through the confirmation page
(once, even when the confirmation is posted twice), adjust with a note, make a key shown once,
disable and revoke keys, plans and subscriptions; CSRF on every form; hostile names escaped."""

from __future__ import annotations

import re

import aiohttp

from tests.web.conftest import ADMIN_TOKEN, QUOTA_PER_USD, ConsoleFactory, admin_client


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


async def get(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def post(s: aiohttp.ClientSession, url: str, data: dict[str, str], page: str) -> tuple[int, str]:
    async with s.post(url, data={"csrf": csrf(page), **data}) as r:
        return r.status, await r.text()


async def test_add_a_user_and_top_up_with_confirmation(console: ConsoleFactory) -> None:
    c = await console()
    async with await admin_client(c.url) as s:
        users = await get(s, c.url + "/admin/users")
        assert "No users yet" in users
        status, page = await post(s, c.url + "/admin/users", {"name": "alice", "usd": "1"}, users)
        assert status == 200 and "User alice created with $1.00" in page
        status, confirm = await post(
            s, c.url + "/admin/users/alice/credit/review", {"usd": "2.50", "note": "invoice 7", "kind": "topup"}, page
        )
        assert status == 200 and "Confirm the top-up" in confirm
        assert "$1.00" in confirm and "$3.50" in confirm  # before and after
        user = await c.store.get_user("alice")
        assert user is not None and user.balance == QUOTA_PER_USD  # nothing moved yet
        token = re.search(r'name="token" value="([^"]+)"', confirm)
        assert token
        form = {"token": token.group(1), "kind": "topup", "quota": str(int(2.5 * QUOTA_PER_USD)), "note": "invoice 7"}
        status, done = await post(s, c.url + "/admin/users/alice/credit", form, confirm)
        assert status == 200 and "Added $2.50 (invoice 7). The balance is now $3.50." in done
        status, again = await post(s, c.url + "/admin/users/alice/credit", form, confirm)  # a double submit
        assert "already used" in again
    user = await c.store.get_user("alice")
    assert user is not None and user.balance == int(3.5 * QUOTA_PER_USD)  # moved once


async def test_a_deduction_needs_a_note_and_takes_money(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=2 * QUOTA_PER_USD)
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + "/admin/users/alice")
        status, answer = await post(s, c.url + "/admin/users/alice/credit/review", {"usd": "1", "kind": "adjust"}, page)
        assert status == 400 and "say why" in answer
        status, answer = await post(s, c.url + "/admin/users/alice/credit/review", {"usd": "-1", "kind": "topup"}, page)
        assert status == 400
        status, confirm = await post(
            s, c.url + "/admin/users/alice/credit/review", {"usd": "0.5", "note": "refund", "kind": "adjust"}, page
        )
        assert "Confirm the deduction" in confirm and "$1.50" in confirm
        token = re.search(r'name="token" value="([^"]+)"', confirm)
        assert token
        status, done = await post(
            s,
            c.url + "/admin/users/alice/credit",
            {"token": token.group(1), "kind": "adjust", "quota": str(-QUOTA_PER_USD // 2), "note": "refund"},
            confirm,
        )
        assert "Took $0.50 (refund). The balance is now $1.50." in done
        history = done[done.index("Wallet history") : done.index("<h2>Keys")]
        assert "adjustment" in history and "refund" in history and "admin" in history
    await c.audit_ok()


async def test_keys_made_in_the_console_are_shown_once_then_managed(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=QUOTA_PER_USD)
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + "/admin/users/alice")
        status, shown = await post(s, c.url + "/admin/users/alice/keys", {"name": "ci", "usd": "0.5"}, page)
        key = re.search(r'<code class="secret">(wk-[^<]+)</code>', shown)
        assert status == 200 and key
        assert await c.chat(key.group(1)) == 200
        page = await get(s, c.url + "/admin/users/alice")
        assert key.group(1) not in page and ADMIN_TOKEN not in page
        made = [k for k in await c.store.list_keys("alice") if k.name == "ci"][0]
        status, page = await post(
            s, c.url + f"/admin/keys/{made.id}/status", {"status": "disabled", "back": "/admin/keys"}, page
        )
        assert "disabled: it is refused" in page
        assert await c.chat(key.group(1)) == 403
        status, page = await post(
            s, c.url + f"/admin/keys/{made.id}/status", {"status": "revoked", "back": "//evil.example/"}, page
        )
        assert "revoked for good" in page  # and back on /admin/keys, not another site
        assert (await c.store.get_key(made.id)).status == "revoked"  # type: ignore[union-attr]


async def test_plans_and_a_subscription(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=0)
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + "/admin/plans")
        assert "No plans yet" in page
        status, page = await post(s, c.url + "/admin/plans", {"name": "gold", "usd": "3", "period": "month"}, page)
        assert "Plan gold created: $3.00 per month." in page
        user_page = await get(s, c.url + "/admin/users/alice")
        status, page = await post(s, c.url + "/admin/users/alice/subscriptions", {"plan": "gold"}, user_page)
        assert "Subscribed to gold" in page
        page = await get(s, c.url + "/admin/plans")
        assert "alice" in page and "active" in page
        sub = (await c.store.list_subscriptions("alice"))[0]
        status, page = await post(s, c.url + "/admin/plans/gold/delete", {}, page)
        assert "Not done" in page  # a subscription to it runs
        status, page = await post(s, c.url + f"/admin/subscriptions/{sub.id}/cancel", {}, page)
        assert "subscription to gold ended." in page
        status, page = await post(s, c.url + "/admin/plans/gold/delete", {}, page)
        assert "Plan gold deleted." in page and await c.store.get_plan("gold") is None


async def test_console_forms_refuse_a_missing_csrf_token(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=QUOTA_PER_USD)
    key_id = (await c.store.list_keys("alice"))[0].id
    async with await admin_client(c.url) as s:
        for path, data in (
            ("/admin/users", {"name": "mallory"}),
            ("/admin/users/alice/credit/review", {"usd": "5"}),
            ("/admin/users/alice/credit", {"quota": "5000", "token": "x"}),
            ("/admin/users/alice/keys", {"name": "x"}),
            ("/admin/users/alice/edit", {"disabled": "true"}),
            (f"/admin/keys/{key_id}/status", {"status": "revoked"}),
            ("/admin/plans", {"name": "p"}),
        ):
            async with s.post(c.url + path, data=data) as r:
                assert r.status == 403, path
    user = await c.store.get_user("alice")
    assert user is not None and user.balance == QUOTA_PER_USD and await c.store.get_user("mallory") is None
    assert (await c.store.get_key(key_id)).status == "active"  # type: ignore[union-attr]


async def test_a_hostile_user_name_renders_as_text_everywhere(console: ConsoleFactory) -> None:
    c = await console()
    hostile = '<script>alert("x")</script>'
    await c.user(hostile)
    assert await c.chat(await c.key(hostile, name="<b>bold</b>")) == 200
    async with await admin_client(c.url) as s:
        for path in (
            "/admin/users",
            "/admin/keys",
            "/admin/logs",
            "/admin/users/" + "%3Cscript%3Ealert(%22x%22)%3C%2Fscript%3E",
        ):
            html = await get(s, c.url + path)
            assert "<script>" not in html and "<b>bold</b>" not in html, path
            assert "&lt;script&gt;" in html, path


async def test_the_home_page_shows_the_figures(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice", quota=2 * QUOTA_PER_USD)
    assert await c.chat(key) == 200
    async with await admin_client(c.url) as s:
        html = await get(s, c.url + "/admin")
    for text in ("Users", "In wallets", "Requests", "Upstreams healthy", "1 of 1", "/admin/logs", "/admin/audit"):
        assert text in html, text


async def test_no_key_or_token_on_any_page_after_its_one_time_display(console: ConsoleFactory) -> None:
    c = await console()
    user_key = await c.user("alice")
    assert await c.chat(user_key) == 200
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + "/admin/users/alice")
        status, shown = await post(s, c.url + "/admin/users/alice/keys", {"name": "ci"}, page)
        made = re.search(r'<code class="secret">(wk-[^<]+)</code>', shown)
        assert made
        secrets = (user_key, made.group(1), ADMIN_TOKEN)
        for path in (
            "/",
            "/admin",
            "/admin/users",
            "/admin/users/alice",
            "/admin/keys",
            "/admin/plans",
            "/admin/logs",
            "/admin/logs.csv",
            "/admin/upstreams",
            "/admin/audit",
        ):
            async with s.get(c.url + path) as r:
                body = await r.text()
            assert r.status == 200 and not any(secret in body for secret in secrets), path


async def test_a_disabled_user_is_refused_and_keeps_their_keys(console: ConsoleFactory) -> None:
    c = await console(auth_cache_ttl=0)
    key = await c.user("alice")
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + "/admin/users/alice")
        status, page = await post(s, c.url + "/admin/users/alice/edit", {"disabled": "true"}, page)
        assert "Disabled: every key of theirs is refused" in page and "Enable this user" in page
        assert await c.chat(key) == 403
        status, page = await post(s, c.url + "/admin/users/alice/edit", {"disabled": "false"}, page)
        assert "Disable this user" in page
    assert await c.chat(key) == 200


async def test_a_key_is_edited_on_its_page(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice", quota=2 * QUOTA_PER_USD)
    own = (await c.store.list_keys("alice"))[0]
    async with await admin_client(c.url) as s:
        page = await get(s, c.url + f"/admin/keys/{own.id}")
        assert "no limit" in page
        status, page = await post(
            s,
            c.url + f"/admin/keys/{own.id}/edit",
            {"name": "laptop", "usd": "0.25", "models": "mock-gpt*", "expires": "2099-01-01"},
            page,
        )
        assert status == 200 and "Saved." in page and "$0.25" in page
        status, page = await post(s, c.url + f"/admin/keys/{own.id}/edit", {"ips": "nonsense"}, page)
        assert status == 400 and "not an IP address" in page
    edited = await c.store.get_key(own.id)
    assert edited is not None and edited.name == "laptop" and edited.balance == QUOTA_PER_USD // 4
    assert edited.models == ("mock-gpt*",) and edited.expires_at is not None
    assert await c.chat(key) == 200 and await c.chat(key, model="mock-claude") == 403
