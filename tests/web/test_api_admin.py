"""The admin API against a real Weir with billing: auth on every route, validation errors with
a code, and the money paths (top-up and adjustment → ledger entry → audit clean)."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import aiohttp
import pytest

from proxy.web import shell_of
from tests.web.conftest import ADMIN_TOKEN, QUOTA_PER_USD, Console, ConsoleFactory

ROUTES = [
    ("GET", "/api/admin/users"),
    ("POST", "/api/admin/users"),
    ("GET", "/api/admin/users/alice"),
    ("PATCH", "/api/admin/users/alice"),
    ("POST", "/api/admin/users/alice/topup"),
    ("POST", "/api/admin/users/alice/adjust"),
    ("POST", "/api/admin/users/alice/keys"),
    ("POST", "/api/admin/users/alice/subscriptions"),
    ("GET", "/api/admin/keys"),
    ("GET", "/api/admin/keys/k_x"),
    ("PATCH", "/api/admin/keys/k_x"),
    ("DELETE", "/api/admin/keys/k_x"),
    ("GET", "/api/admin/plans"),
    ("POST", "/api/admin/plans"),
    ("GET", "/api/admin/subscriptions"),
    ("GET", "/api/admin/logs"),
    ("GET", "/api/admin/audit"),
    ("GET", "/api/admin/upstreams"),
    ("GET", "/api/admin/users/alice/ledger"),
    ("DELETE", "/api/admin/plans/gold"),
    ("DELETE", "/api/admin/subscriptions/s_x"),
    ("GET", "/api/admin/holds"),
]


async def call(
    c: Console, method: str, path: str, body: Any = None, token: str | None = ADMIN_TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, c.url + path, json=body, headers=headers) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_every_route_needs_the_admin_token(console: ConsoleFactory) -> None:
    c = await console()
    user_key = await c.user("alice")
    before = (await c.store.get_user("alice")).balance  # type: ignore[union-attr]
    for method, path in ROUTES:
        for token, code in (
            (None, "admin_token_required"),
            ("wrong-token-0123456789", "invalid_admin_token"),
            (user_key, "invalid_admin_token"),
        ):
            status, body = await call(c, method, path, {"usd": "100"}, token)
            assert status == 401 and body["error"]["code"] == code, (method, path, token)
        shell_of(c.proxy.app).limiter.succeeded("127.0.0.1")  # the limiter counts wrong tokens
    assert (await c.store.get_user("alice")).balance == before  # type: ignore[union-attr]


async def test_without_an_admin_token_the_admin_api_is_404(console: ConsoleFactory) -> None:
    c = await console(admin=False)
    for method, path in ROUTES:
        status, body = await call(c, method, path, {}, "anything-at-all-0123456789")
        assert status == 404 and body["error"]["code"] == "not_found", (method, path)


async def test_repeated_wrong_tokens_are_limited(console: ConsoleFactory) -> None:
    c = await console()
    for _ in range(10):
        assert (await call(c, "GET", "/api/admin/users", token="wrong-token-0123456789"))[0] == 401
    status, body = await call(c, "GET", "/api/admin/users")
    assert status == 429 and body["error"]["code"] == "too_many_attempts"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_top_up_writes_a_ledger_entry_and_the_audit_stays_clean(console: ConsoleFactory, backend: str) -> None:
    c = await console(backend=backend)
    status, user = await call(c, "POST", "/api/admin/users", {"name": "alice", "usd": "2.50", "group": "team"})
    assert status == 201 and user["balance_quota"] == int(2.5 * QUOTA_PER_USD) and user["group"] == "team"
    status, after = await call(c, "POST", "/api/admin/users/alice/topup", {"usd": "1.25", "note": "invoice 42"})
    assert status == 200
    assert after["balance_quota"] == int(3.75 * QUOTA_PER_USD) and after["credited_usd"] == "1.250000"
    status, after = await call(c, "POST", "/api/admin/users/alice/adjust", {"quota": -250_000, "note": "refund"})
    assert status == 200 and after["balance_quota"] == int(3.25 * QUOTA_PER_USD)
    stored = await c.store.get_user("alice")
    assert stored is not None and stored.balance == after["balance_quota"]
    status, report = await call(c, "GET", "/api/admin/audit")
    assert status == 200 and report["ok"] is True and report["mismatches"] == []
    status, holds = await call(c, "GET", "/api/admin/holds")
    assert status == 200 and holds == {"holds": []}


BAD_INPUT = [
    ("/api/admin/users/alice/topup", {"usd": "-1"}, 400, "invalid_amount"),
    ("/api/admin/users/alice/topup", {"usd": "ten"}, 400, "invalid_amount"),
    ("/api/admin/users/alice/topup", {"usd": "1", "quota": 5}, 400, "invalid_amount"),
    ("/api/admin/users/alice/topup", {}, 400, "invalid_amount"),
    ("/api/admin/users/alice/topup", {"usd": "1", "bonus": True}, 400, "unknown_field"),
    ("/api/admin/users/alice/adjust", {"usd": "-1"}, 400, "note_required"),
    ("/api/admin/users/alice/adjust", {"usd": "1", "note": "bonus"}, 400, "invalid_amount"),
    ("/api/admin/users/nobody/topup", {"usd": "1"}, 404, "unknown_user"),
    ("/api/admin/users", {"name": "alice"}, 409, "user_exists"),
    ("/api/admin/users", {"name": " spaced"}, 400, "invalid_name"),
    ("/api/admin/users", {"name": "bob", "preference": "cheapest"}, 400, "invalid_preference"),
    ("/api/admin/users/alice/keys", {"ips": "not-a-network"}, 400, "invalid_network"),
    ("/api/admin/users/alice/keys", {"expires": "2001-01-01"}, 400, "invalid_time"),
    ("/api/admin/users/alice/subscriptions", {"plan": "gold"}, 404, "unknown_plan"),
    ("/api/admin/plans", {"name": "gold", "usd": "5", "period": "fortnight"}, 400, "invalid_period"),
]


async def test_bad_input_is_refused_with_a_code(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=QUOTA_PER_USD)
    for path, body, status, code in BAD_INPUT:
        got, answer = await call(c, "POST", path, body)
        assert got == status and answer["error"]["code"] == code, (path, body, answer)
    assert (await c.store.get_user("alice")).balance == QUOTA_PER_USD  # type: ignore[union-attr]
    assert len(await c.store.list_keys("alice")) == 1 and await c.store.list_plans() == []


async def test_a_body_that_is_not_a_json_object_is_refused(console: ConsoleFactory) -> None:
    c = await console()
    for body in (b"[", b"[1]", b"null"):
        async with aiohttp.ClientSession() as s:
            async with s.post(c.url + "/api/admin/users", data=body, headers=c.admin) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"


async def test_keys_made_listed_edited_and_revoked(console: ConsoleFactory) -> None:
    c = await console()
    await call(c, "POST", "/api/admin/users", {"name": "alice", "usd": "5"})
    status, made = await call(
        c, "POST", "/api/admin/users/alice/keys", {"name": "ci", "usd": "1", "models": ["mock-*"], "ips": ["127.0.0.1"]}
    )
    assert status == 201 and made["key"].startswith("wk-") and made["ips"] == ["127.0.0.1/32"]
    assert await c.chat(made["key"]) == 200
    status, listed = await call(c, "GET", "/api/admin/keys?user=alice")
    assert [k["id"] for k in listed["keys"]] == [made["id"]] and made["key"] not in str(listed)
    status, edited = await call(c, "PATCH", f"/api/admin/keys/{made['id']}", {"status": "disabled"})
    assert status == 200 and edited["status"] == "disabled"
    assert await c.chat(made["key"]) == 403
    status, revoked = await call(c, "DELETE", f"/api/admin/keys/{made['id']}")
    assert status == 200 and revoked["status"] == "revoked"
    status, body = await call(c, "PATCH", f"/api/admin/keys/{made['id']}", {"status": "active"})
    assert status == 409 and body["error"]["code"] == "key_revoked"
    status, body = await call(c, "DELETE", "/api/admin/keys/k_nope")
    assert status == 404 and body["error"]["code"] == "unknown_key"


async def test_a_user_disabled_and_enabled_again(console: ConsoleFactory) -> None:
    c = await console(auth_cache_ttl=0)  # a refused key is cached for auth_cache_ttl otherwise
    key = await c.user("alice")
    status, user = await call(c, "PATCH", "/api/admin/users/alice", {"disabled": True, "group": "vip"})
    assert status == 200 and user["disabled"] is True and user["group"] == "vip"
    assert await c.chat(key) == 403  # user_disabled
    assert (await c.store.list_keys("alice"))[0].status == "active"  # the keys are as they were
    status, user = await call(c, "PATCH", "/api/admin/users/alice", {"disabled": False})
    assert user["disabled"] is False
    assert await c.chat(key) == 200


async def test_plans_and_subscriptions(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=0)
    status, plan = await call(c, "POST", "/api/admin/plans", {"name": "gold", "usd": "3", "period": "month"})
    assert status == 201 and plan["quota"] == 3 * QUOTA_PER_USD and plan["replaced"] is False
    status, sub = await call(c, "POST", "/api/admin/users/alice/subscriptions", {"plan": "gold"})
    assert status == 201 and sub["plan"] == "gold" and sub["active"] is True
    status, subs = await call(c, "GET", "/api/admin/subscriptions")
    assert [s["plan"] for s in subs["subscriptions"]] == ["gold"]
    assert await c.chat(await c.key("alice", name="second")) == 200  # paid from the subscription


async def test_logs_with_filters_and_csv_and_upstreams(console: ConsoleFactory) -> None:
    c = await console()
    alice = await c.user("alice")
    await c.user("bob")
    assert await c.chat(alice) == 200 and await c.chat(alice, model="mock-claude") == 200
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    status, body = await call(c, "GET", f"/api/admin/logs?user=alice&model=mock-claude&since={since}")
    assert status == 200 and [r["model"] for r in body["logs"]] == ["mock-claude"]
    status, body = await call(c, "GET", "/api/admin/logs?limit=1")
    assert len(body["logs"]) == 1 and body["next_before"] == body["logs"][0]["id"]
    status, body = await call(c, "GET", "/api/admin/logs?user=alice")
    assert body["totals"]["requests"] == 2 and body["totals"]["charged_quota"] == sum(r["charge"] for r in body["logs"])
    status, body = await call(c, "GET", "/api/admin/logs?outcome=upstream_error")
    assert status == 200 and body["logs"] == [] and body["totals"]["requests"] == 0
    status, body = await call(c, "GET", "/api/admin/logs?user=nobody")
    assert status == 404 and body["error"]["code"] == "not_found"
    async with aiohttp.ClientSession() as s:
        async with s.get(c.url + "/api/admin/logs?format=csv&user=alice", headers=c.admin) as r:
            rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [row["model"] for row in rows] == ["mock-claude", "mock-gpt"]
    status, body = await call(c, "GET", "/api/admin/upstreams")
    [up] = body["upstreams"]
    assert up["name"] == "fake" and up["healthy"] is True and up["request_count"] == 2
    assert set(up) >= {"name", "type", "models", "healthy", "recent_errors", "p50_ms"}


async def test_a_key_is_edited_and_the_ledger_says_who_moved_money(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=QUOTA_PER_USD)
    status, made = await call(c, "POST", "/api/admin/users/alice/keys", {"name": "ci"})
    status, edited = await call(
        c, "PATCH", f"/api/admin/keys/{made['id']}", {"name": "ci-2", "usd": "0.5", "models": "mock-*", "expires": None}
    )
    assert status == 200 and edited["name"] == "ci-2" and edited["quota"] is not None
    assert edited["remaining_quota"] == QUOTA_PER_USD // 2 and edited["models"] == ["mock-*"]
    status, body = await call(c, "PATCH", f"/api/admin/keys/{made['id']}", {"colour": "red"})
    assert status == 400 and body["error"]["code"] == "unknown_field"
    await call(c, "POST", "/api/admin/users/alice/topup", {"usd": "2", "note": "invoice 9"})
    status, ledger = await call(c, "GET", "/api/admin/users/alice/ledger")
    assert status == 200 and ledger["balance_quota"] == 3 * QUOTA_PER_USD
    last = ledger["entries"][-1]
    assert last["actor"] == "admin" and "invoice 9" in str(last)


async def test_plans_are_deleted_and_subscriptions_cancelled(console: ConsoleFactory) -> None:
    c = await console()
    await c.user("alice", quota=0)
    await call(c, "POST", "/api/admin/plans", {"name": "gold", "usd": "3", "period": "month"})
    status, sub = await call(c, "POST", "/api/admin/users/alice/subscriptions", {"plan": "gold"})
    status, body = await call(c, "DELETE", "/api/admin/plans/gold")
    assert status == 409 and body["error"]["code"] == "conflict"  # a subscription to it runs
    status, ended = await call(c, "DELETE", f"/api/admin/subscriptions/{sub['id']}")
    assert status == 200 and ended["active"] is False
    status, gone = await call(c, "DELETE", "/api/admin/plans/gold")
    assert status == 200 and gone["deleted"] is True
    status, body = await call(c, "DELETE", "/api/admin/subscriptions/s_nope")
    assert status == 404
