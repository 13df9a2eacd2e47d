"""The account commands of `weir`, run as a real subprocess (`python -m proxy …`) against a
temporary proxy.yaml, on SQLite and on Redis.

Setup that only the proxy itself would do (holds and captures) and tampering go through the
backend directly; everything else goes through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugins.billing.apikeys import hash_key
from plugins.billing.store.base import Hold, LogDetails, Store
from plugins.billing.store.factory import make_store
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[4]
DAY = 86400.0


@dataclass
class Weir:
    """A temp proxy.yaml and helpers to run `weir` on it and to reach its store directly."""

    backend: str
    config: Path
    prefix: str = ""
    redis_url: str = ""

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """`python -m proxy ARGV --config CONFIG`, captured."""
        env = {k: v for k, v in os.environ.items() if k != "WEIR_CONFIG"}
        env["PYTHONPATH"] = str(ROOT)
        try:
            return subprocess.run(
                [sys.executable, "-m", "proxy", *argv, "--config", str(self.config)],
                capture_output=True,
                text=True,
                env=env,
                cwd=self.config.parent,
                timeout=120,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"weir {' '.join(argv)} ({self.backend}) hung for 120 s; stderr: {exc.stderr!r}")

    def ok(self, *argv: str) -> str:
        """Run a command that must succeed; its stdout."""
        res = self.run(*argv)
        assert res.returncode == 0, f"weir {' '.join(argv)} exited {res.returncode}: {res.stderr}"
        return res.stdout

    def json(self, *argv: str) -> Any:
        """Run with --json; stdout must be exactly one JSON document."""
        out = self.ok(*argv, "--json")
        return json.loads(out)  # json.loads rejects trailing data: one document only

    def fail(self, *argv: str, code: int = 1) -> str:
        """Run a command that must fail with `code`, nothing on stdout; its stderr."""
        res = self.run(*argv)
        assert res.returncode == code, f"expected exit {code}, got {res.returncode}: {res.stdout}{res.stderr}"
        assert res.stdout == ""
        assert res.stderr.strip()
        return res.stderr

    async def with_store(self) -> Store:
        """An opened store on the same data (close it after use)."""
        store = make_store(load_config(self.config))
        await store.open()
        return store

    def tamper_wallet(self, user: str, delta: int) -> None:
        """Change a wallet balance behind the store's back (no ledger entry)."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.config.parent / "weir.db") as db:
                db.execute("UPDATE users SET balance = balance + ? WHERE name = ?", (delta, user))
            return
        import redis

        from plugins.billing.store.redis.layout import Layout

        client = redis.Redis.from_url(self.redis_url)
        try:
            assert client.hincrby(Layout(self.prefix).user(user), "balance", delta) is not None
        finally:
            client.close()


def _write_config(path: Path, store: str, quota_per_usd: int | None = None) -> Path:
    plugins = "[]" if quota_per_usd is None else f"[{{use: billing, config: {{quota_per_usd: {quota_per_usd}}}}}]"
    path.write_text(f"store: {store}\nplugins: {plugins}\n")
    return path


@pytest.fixture(params=["sqlite", "redis"])
def weir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Weir]:
    """The CLI on a fresh store of each backend (Redis: the suite's private redis-server,
    under a unique prefix, dropped after)."""
    if request.param == "sqlite":
        yield Weir("sqlite", _write_config(tmp_path / "proxy.yaml", "{backend: sqlite, path: ./weir.db}"))
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"weirtest:cli:{uuid.uuid4().hex}"
    store = f'{{backend: redis, url: "{url}", prefix: "{prefix}"}}'
    yield Weir("redis", _write_config(tmp_path / "proxy.yaml", store), prefix, url)
    from plugins.billing.store.redis.store import RedisStore

    async def drop() -> None:
        rs = RedisStore(url, prefix=prefix)
        await rs.open()
        await rs.drop_all()
        await rs.close()

    asyncio.run(drop())


def test_user_add_topup_show_move_exact_quota(weir: Weir) -> None:
    added = weir.json("user", "add", "alice", "--usd", "1.10", "--group", "vip", "--preference", "wallet_first")
    assert (added["balance_quota"], added["group"], added["preference"]) == (550000, "vip", "wallet_first")
    # 2.01 × 500000 is 1004999.999… in float; Decimal gives the exact 1005000.
    assert weir.json("user", "topup", "alice", "--usd", "2.01")["balance_quota"] == 1555000
    # 0.000001 × 500000 = 0.5 rounds half up to 1 (banker's rounding would give 0).
    assert weir.json("user", "topup", "alice", "--usd", "0.000001")["credited_quota"] == 1
    assert weir.json("user", "adjust", "alice", "--quota", "-1001", "--note", "refund")["balance_quota"] == 1554000
    shown = weir.json("user", "show", "alice")
    assert shown["balance_quota"] == shown["available_quota"] == 1554000
    assert shown["balance_usd"] == "3.108000"
    assert (shown["reserved_quota"], shown["used_quota"], shown["request_count"], shown["keys"]) == (0, 0, 0, 0)
    assert shown["subscriptions"] == []
    text = weir.ok("user", "show", "alice")
    assert "1554000" in text and "3.108000" in text
    weir.ok("user", "add", "bob")
    assert [u["name"] for u in weir.json("user", "list")] == ["alice", "bob"]
    assert "ledger consistent" in weir.ok("audit")


def test_user_errors_go_to_stderr(weir: Weir) -> None:
    weir.ok("user", "add", "alice")
    assert "already exists" in weir.fail("user", "add", "alice")
    assert "unknown user 'ghost'" in weir.fail("user", "show", "ghost")
    assert "unknown user 'ghost'" in weir.fail("user", "topup", "ghost", "--quota", "5")
    assert "not a USD amount" in weir.fail("user", "topup", "alice", "--usd", "1,5")
    assert "non-zero" in weir.fail("user", "topup", "alice", "--usd", "0")
    weir.fail("user", "topup", "alice", "--usd", "1", "--quota", "5", code=2)  # argparse: not both
    weir.fail("user", "add", "carol", "--preference", "cheapest", code=2)
    assert weir.json("user", "show", "alice")["balance_quota"] == 0


def test_usd_uses_billing_quota_per_usd(tmp_path: Path) -> None:
    cli = Weir("sqlite", _write_config(tmp_path / "proxy.yaml", "{backend: sqlite, path: ./weir.db}", 1000))
    assert cli.json("user", "add", "alice", "--usd", "1.10")["balance_quota"] == 1100
    assert cli.json("user", "topup", "alice", "--usd", "0.0005")["balance_quota"] == 1101
    assert cli.json("user", "show", "alice")["balance_usd"] == "1.101000"


def test_key_is_shown_once_and_never_again(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--quota", "100")
    created = weir.json(
        "key",
        "create",
        "alice",
        "--name",
        "laptop",
        "--quota",
        "5000",
        "--models",
        "gpt-*,claude-*",
        "--ips",
        "10.0.0.7,192.168.0.0/16",
        "--group",
        "vip",
        "--expires",
        "2099-01-01T00:00:00Z",
    )
    clear = created["key"]
    assert clear.startswith("wk-") and len(clear) == 43
    assert created["quota"] == created["remaining_quota"] == 5000
    assert created["ips"] == ["10.0.0.7/32", "192.168.0.0/16"]
    assert created["models"] == ["gpt-*", "claude-*"]
    assert created["expires_at"] == "2099-01-01T00:00:00Z"

    async def lookup() -> str | None:
        store = await weir.with_store()
        try:
            found = await store.find_key(hash_key(clear))
            return None if found is None else found.id
        finally:
            await store.close()

    assert asyncio.run(lookup()) == created["id"]
    text = weir.ok("key", "create", "alice", "--unlimited")
    second = [line for line in text.splitlines() if line.startswith("wk-")]
    assert len(second) == 1 and text.count(second[0]) == 1
    secrets = (clear, clear[3:], clear[-8:], hash_key(clear), second[0][-8:], hash_key(second[0]))
    for argv in (("key", "show", created["id"]), ("key", "list", "alice"), ("user", "show", "alice")):
        for out in (weir.ok(*argv), weir.ok(*argv, "--json")):
            assert not any(s in out for s in secrets), f"weir {' '.join(argv)} leaked key material"
    listed = weir.json("key", "list", "alice")
    assert [k["unlimited"] for k in listed] == [False, True]
    assert "key" not in listed[0]
    assert weir.json("user", "show", "alice")["keys"] == 2


def test_key_status_changes(weir: Weir) -> None:
    weir.ok("user", "add", "alice")
    key_id = weir.json("key", "create", "alice")["id"]
    assert weir.json("key", "disable", key_id)["status"] == "disabled"
    assert weir.json("key", "enable", key_id)["status"] == "active"
    assert "revoked" in weir.ok("key", "revoke", key_id)
    shown = weir.json("key", "show", key_id)
    assert (shown["status"], shown["usable"]) == ("revoked", False)
    assert "revoked" in weir.fail("key", "enable", key_id)
    assert weir.json("key", "show", key_id)["status"] == "revoked"
    assert "unknown key 'k_nope'" in weir.fail("key", "revoke", "k_nope")
    assert "unknown key 'k_nope'" in weir.fail("key", "show", "k_nope")


def test_key_create_validates_input(weir: Weir) -> None:
    weir.ok("user", "add", "alice")
    assert "'10.0.0.300'" in weir.fail("key", "create", "alice", "--ips", "10.0.0.0/8,10.0.0.300")
    assert "in the past" in weir.fail("key", "create", "alice", "--expires", "2001-01-01")
    assert "ISO 8601" in weir.fail("key", "create", "alice", "--expires", "next tuesday")
    assert "unknown user 'ghost'" in weir.fail("key", "create", "ghost")
    assert "negative" in weir.fail("key", "create", "alice", "--quota", "-5")
    assert "empty item" in weir.fail("key", "create", "alice", "--models", "gpt-*,,o1")
    assert weir.json("key", "list", "alice") == []


def test_plan_and_subscription(weir: Weir) -> None:
    weir.ok("user", "add", "alice")
    plan = weir.json("plan", "add", "pro", "--usd", "2.01", "--period", "month", "--days", "10", "--models", "gpt-*")
    assert (plan["quota"], plan["period"], plan["days"], plan["models"]) == (1005000, "month", 10, ["gpt-*"])
    weir.ok("plan", "add", "daily", "--quota", "1000", "--period", "day")
    assert [p["name"] for p in weir.json("plan", "list")] == ["daily", "pro"]
    sub = weir.json("sub", "grant", "alice", "pro")
    assert (sub["plan"], sub["balance_quota"], sub["active"]) == ("pro", 1005000, True)
    start, end = _epoch(sub["start"]), _epoch(sub["end"])
    assert end - start == pytest.approx(10 * DAY, abs=1)
    daily = weir.json("sub", "grant", "alice", "daily")
    assert _epoch(daily["end"]) - _epoch(daily["start"]) == pytest.approx(30 * DAY, abs=1)
    fixed = weir.json("sub", "grant", "alice", "daily", "--start", "2020-01-01T00:00:00Z", "--end", "2099-01-01")
    assert (fixed["start"], fixed["end"]) == ("2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z")
    shown = weir.json("user", "show", "alice")
    assert sorted(s["plan"] for s in shown["subscriptions"]) == ["daily", "daily", "pro"]
    assert {s["id"] for s in shown["subscriptions"]} == {sub["id"], daily["id"], fixed["id"]}
    assert shown["balance_quota"] == 0  # the wallet is untouched by a grant
    assert len(weir.json("sub", "list", "alice")) == 3
    assert "pro" in weir.ok("user", "show", "alice")
    assert "unknown plan 'gold'" in weir.fail("sub", "grant", "alice", "gold")
    assert "unknown user 'ghost'" in weir.fail("sub", "grant", "ghost", "pro")
    assert "end after it starts" in weir.fail(
        "sub", "grant", "alice", "pro", "--start", "2030-01-02", "--end", "2030-01-01"
    )
    weir.fail("plan", "add", "bad", "--usd", "1", "--period", "year", code=2)
    assert "positive" in weir.fail("plan", "add", "free", "--usd", "0", "--period", "day")
    assert "ledger consistent" in weir.ok("audit")


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


async def _spend(weir: Weir, key_id: str, charges: list[int], instance: str = "i1") -> None:
    """Hold and capture through the store, as the billing plugin would."""
    store = await weir.with_store()
    try:
        await store.heartbeat(instance)
        for n, charge in enumerate(charges):
            held = await store.hold(f"req-{n}", "alice", key_id, 100, None, "pv1", 600, instance, "gpt-4o")
            assert isinstance(held, Hold), held
            details = LogDetails(
                end_reason="completed",
                usage_source="upstream",
                model="gpt-4o",
                upstream="mock",
                input=10 * (n + 1),
                output=5,
            )
            await store.capture(f"req-{n}", charge, details)
    finally:
        await store.close()


def test_logs_json_shape_and_paging(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--quota", "10000")
    weir.ok("user", "add", "bob")
    key_id = weir.json("key", "create", "alice")["id"]
    asyncio.run(_spend(weir, key_id, [40, 60, 250]))
    rows = weir.json("logs")
    assert [r["request_id"] for r in rows] == ["req-2", "req-1", "req-0"]
    first = rows[-1]
    assert {
        "id",
        "time",
        "ts",
        "request_id",
        "user",
        "key_id",
        "source",
        "estimate",
        "charge",
        "charge_usd",
        "overage",
        "price_version",
        "end_reason",
        "usage_source",
        "model",
        "upstream",
        "input",
        "output",
        "latency_ms",
        "status",
    } <= set(first)
    assert (first["user"], first["key_id"], first["source"]) == ("alice", key_id, "wallet")
    assert (first["estimate"], first["charge"], first["charge_usd"], first["input"]) == (100, 40, "0.000080", 10)
    assert rows[0]["charge"] == 250
    page = weir.json("logs", "--user", "alice", "--limit", "2")
    assert [r["id"] for r in page] == [rows[0]["id"], rows[1]["id"]]
    assert [r["id"] for r in weir.json("logs", "--before", str(page[-1]["id"]))] == [rows[2]["id"]]
    assert weir.json("logs", "--user", "bob") == []
    assert weir.json("logs", "--since", "2099-01-01") == []
    assert "unknown user 'ghost'" in weir.fail("logs", "--user", "ghost")
    assert "req-0" in weir.ok("logs")
    assert weir.json("user", "show", "alice")["used_quota"] == 350
    assert weir.json("key", "show", key_id)["request_count"] == 3


def test_audit_clean_then_tampered(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--usd", "1")
    weir.ok("user", "add", "bob", "--usd", "1")
    key_id = weir.json("key", "create", "alice", "--quota", "1000")["id"]
    asyncio.run(_spend(weir, key_id, [30]))
    clean = weir.run("audit")
    assert clean.returncode == 0 and "ledger consistent" in clean.stdout and "no orphaned holds" in clean.stdout
    report = weir.json("audit")
    assert (report["ok"], report["mismatches"], report["orphans"]) == (True, [], [])
    weir.tamper_wallet("bob", 7)
    bad = weir.run("audit")
    assert bad.returncode == 1
    assert "MISMATCH" in bad.stdout and "bob" in bad.stdout and "ledger inconsistent" in bad.stdout
    assert "audit failed" in bad.stderr
    res = weir.run("audit", "--json")
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["ok"] is False and data["consistent"] is False
    assert any("bob" in m for m in data["mismatches"])
    assert not any("alice" in m for m in data["mismatches"])


def test_audit_reports_orphaned_hold(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--usd", "1")
    key_id = weir.json("key", "create", "alice")["id"]

    async def orphan() -> None:
        store = await weir.with_store()
        try:  # an instance that never heartbeats: its hold is an orphan at once
            held = await store.hold("lost-1", "alice", key_id, 500, None, "pv1", 600, "dead-instance", "gpt-4o")
            assert isinstance(held, Hold)
        finally:
            await store.close()

    asyncio.run(orphan())
    res = weir.run("audit")
    assert res.returncode == 1
    assert "ledger consistent" in res.stdout and "ORPHAN" in res.stdout and "lost-1" in res.stdout
    data = json.loads(weir.run("audit", "--json").stdout)
    assert data["consistent"] is True and data["ok"] is False and len(data["orphans"]) == 1
    assert weir.json("user", "show", "alice")["reserved_quota"] == 500


def test_json_output_is_one_document(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--usd", "1")
    key_id = weir.json("key", "create", "alice")["id"]
    weir.ok("plan", "add", "pro", "--usd", "1", "--period", "week")
    commands: list[tuple[str, ...]] = [
        ("user", "add", "bob"),
        ("user", "topup", "bob", "--quota", "3"),
        ("user", "show", "alice"),
        ("user", "list"),
        ("key", "create", "bob"),
        ("key", "show", key_id),
        ("key", "list", "alice"),
        ("key", "disable", key_id),
        ("key", "enable", key_id),
        ("plan", "add", "basic", "--quota", "9", "--period", "none"),
        ("plan", "list"),
        ("sub", "grant", "alice", "pro"),
        ("sub", "list", "alice"),
        ("logs",),
        ("audit",),
        ("user", "set", "bob", "--disable"),
        ("user", "adjust", "bob", "--quota", "-1", "--note", "typo"),
        ("ledger", "bob"),
        ("key", "set", key_id, "--name", "renamed"),
        ("logs", "--totals"),
        ("plan", "delete", "basic"),
        ("key", "revoke", key_id),
    ]
    for argv in commands:
        res = weir.run(*argv, "--json")
        assert res.returncode == 0, res.stderr
        assert isinstance(json.loads(res.stdout), (dict, list)), argv


def test_unreachable_store_exits_3(tmp_path: Path) -> None:
    cli = Weir("redis", _write_config(tmp_path / "proxy.yaml", '{backend: redis, url: "redis://127.0.0.1:1/0"}'))
    assert "store unavailable" in cli.fail("user", "list", code=3)
    missing = tmp_path / "nope" / "deeper" / "weir.db"
    cli = Weir("sqlite", _write_config(tmp_path / "proxy2.yaml", f"{{backend: sqlite, path: '{missing}'}}"))
    assert "store unavailable" in cli.fail("audit", code=3)
