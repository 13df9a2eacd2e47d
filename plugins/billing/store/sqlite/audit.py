"""`SQLiteStore.audit()`: recompute every total from the ledger and the holds, in one snapshot.

Checks, each reported as a human-readable line:
- every wallet, key and subscription: balance and reserved equal the sum of its ledger entries;
- reserved also equals the sum of the open holds drawing on that account;
- used counters equal the charges: users and subscriptions from the ledger's capture, expire
  and overage entries, keys from their resolved holds; request counts from the resolved holds
  (see `rules.counts_as_request`); upstream counters from the consume log;
- every resolved hold has exactly one consume-log row, and no ledger entry names a missing
  account;
- orphans: open holds whose instance is silent for more than `orphan_after`, or past their ttl;
- stuck (only with `stuck_after`): open holds with no sign of life (checkpoint, else creation)
  for longer than `stuck_after`, whatever their instance;
  (a task's hold is neither: it lives as long as its task)
- tasks (`sqlite.tasks.task_audit`): no task hold without a live task, no task ended twice;
- negatives (informational, not a failure): wallets below zero, with their overage entries.

Synchronous: `SQLiteStore.audit` runs `run_audit` whole on the connection's worker thread,
inside one read transaction.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict

from plugins.billing.store import rules
from plugins.billing.store.base import AuditReport
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.ledger import Db, fetch_all
from plugins.billing.store.sqlite.tasks import task_audit
from plugins.billing.store.tasks import TASK_OWNER

_COUNTED = "CASE WHEN state = 'captured' OR (state = 'expired' AND checkpoint IS NOT NULL) THEN 1 ELSE 0 END"


def _diff(label: str, stored: int, expected: int, source: str) -> list[str]:
    return [] if stored == expected else [f"{label} {stored} != {source} {expected}"]


def _sums(db: Db, sql: str) -> dict[str, tuple[int, ...]]:
    """First column → the remaining columns, from a grouped query."""
    return {str(r[0]): tuple(int(v or 0) for v in tuple(r)[1:]) for r in fetch_all(db, sql)}


def _account_checks(db: Db) -> list[str]:
    ledger = _sums(db, "SELECT account, SUM(d_balance), SUM(d_reserved) FROM ledger GROUP BY account")
    held = {
        "wallet": _sums(
            db, "SELECT user, SUM(amount) FROM holds WHERE state = 'open' AND source = 'wallet' GROUP BY user"
        ),
        "sub": _sums(
            db,
            "SELECT subscription_id, SUM(amount) FROM holds WHERE state = 'open'"
            " AND source = 'subscription' GROUP BY subscription_id",
        ),
        "key": _sums(db, "SELECT key_id, SUM(key_amount) FROM holds WHERE state = 'open' GROUP BY key_id"),
    }
    accounts = (
        [("wallet", r) for r in fetch_all(db, "SELECT name AS id, balance, reserved FROM users")]
        + [("key", r) for r in fetch_all(db, "SELECT id, balance, reserved FROM api_keys")]
        + [("sub", r) for r in fetch_all(db, "SELECT id, balance, reserved FROM subscriptions")]
    )
    out: list[str] = []
    seen = set()
    for owner, row in accounts:
        name = f"{owner}:{row['id']}"
        seen.add(name)
        balance, reserved = ledger.get(name, (0, 0))
        out += _diff(f"{name} balance", row["balance"], balance, "ledger")
        out += _diff(f"{name} reserved", row["reserved"], reserved, "ledger")
        open_sum = held[owner].get(str(row["id"]), (0,))[0]
        out += _diff(f"{name} reserved", row["reserved"], open_sum, "open holds")
    out += [f"ledger account {name} has no row" for name in sorted(set(ledger) - seen)]
    return out


def _usage_checks(db: Db) -> list[str]:
    spent = _sums(
        db,
        "SELECT account, -SUM(d_balance) FROM ledger WHERE kind IN ('capture', 'expire', 'overage') GROUP BY account",
    )
    owner_of = {str(r["id"]): str(r["user"]) for r in fetch_all(db, "SELECT id, user FROM subscriptions")}
    user_spent: dict[str, int] = defaultdict(int)
    for account, (amount,) in spent.items():
        owner, _, ident = account.partition(":")
        if owner == "wallet":
            user_spent[ident] += amount
        elif owner == "sub":
            user_spent[owner_of.get(ident, "?")] += amount
    by_user = _sums(db, f"SELECT user, SUM(charged), SUM({_COUNTED}) FROM holds WHERE state != 'open' GROUP BY user")
    by_key = _sums(db, f"SELECT key_id, SUM(charged), SUM({_COUNTED}) FROM holds WHERE state != 'open' GROUP BY key_id")
    out: list[str] = []
    for r in fetch_all(db, "SELECT name, used, request_count FROM users"):
        name = f"user:{r['name']}"
        out += _diff(f"{name} used", r["used"], user_spent.get(r["name"], 0), "ledger")
        out += _diff(f"{name} request_count", r["request_count"], by_user.get(r["name"], (0, 0))[1], "holds")
    for r in fetch_all(db, "SELECT id, used, request_count FROM api_keys"):
        charged, count = by_key.get(r["id"], (0, 0))
        out += _diff(f"key:{r['id']} used", r["used"], charged, "holds")
        out += _diff(f"key:{r['id']} request_count", r["request_count"], count, "holds")
    for r in fetch_all(db, "SELECT id, used FROM subscriptions"):
        out += _diff(f"sub:{r['id']} used", r["used"], spent.get(f"sub:{r['id']}", (0,))[0], "ledger")
    return out


def _record_checks(db: Db) -> list[str]:
    logged = _sums(
        db,
        "SELECT upstream, SUM(charge), COUNT(*) FROM consume_log"
        " WHERE resolution = 'captured' AND upstream != '' GROUP BY upstream",
    )
    out: list[str] = []
    stored = {str(r["name"]): (r["used"], r["request_count"]) for r in fetch_all(db, "SELECT * FROM upstream_counters")}
    for name in sorted(set(stored) | set(logged)):
        used, count = stored.get(name, (0, 0))
        want_used, want_count = logged.get(name, (0, 0))
        out += _diff(f"upstream:{name} used", used, want_used, "consume log")
        out += _diff(f"upstream:{name} request_count", count, want_count, "consume log")
    rows = fetch_all(
        db,
        "SELECT h.request_id, h.state, COUNT(c.id) AS n FROM holds h"
        " LEFT JOIN consume_log c ON c.request_id = h.request_id"
        " GROUP BY h.request_id HAVING (h.state = 'open' AND n != 0) OR (h.state != 'open' AND n != 1)",
    )
    out += [f"hold {r['request_id']} ({r['state']}) has {r['n']} consume-log rows" for r in rows]
    return out


def _orphans(db: Db, now: float, orphan_after: float) -> list[str]:
    rows = fetch_all(
        db,
        "SELECT h.request_id, h.user, h.instance_id, h.expires_at, i.last_seen FROM holds h"
        " LEFT JOIN instances i ON i.id = h.instance_id WHERE h.state = 'open' AND h.instance_id != ?"
        " AND (i.last_seen IS NULL OR i.last_seen < ? OR h.expires_at < ?) ORDER BY h.created_at",
        (TASK_OWNER, now - orphan_after, now),
    )
    out = []
    for r in rows:
        if r["last_seen"] is None:
            why = "was never seen"
        elif r["last_seen"] < now - orphan_after:
            why = f"last seen {now - r['last_seen']:.0f}s ago"
        else:
            why = f"is alive but the hold expired {now - r['expires_at']:.0f}s ago"
        out.append(f"hold {r['request_id']} (user {r['user']}) is open; instance {r['instance_id']} {why}")
    return out


def _stuck(db: Db, now: float, stuck_after: float | None) -> list[str]:
    if stuck_after is None:
        return []
    rows = fetch_all(
        db,
        "SELECT h.*, i.last_seen FROM holds h LEFT JOIN instances i ON i.id = h.instance_id"
        " WHERE h.state = 'open' AND h.instance_id != ? AND COALESCE(h.touched_at, h.created_at) < ?"
        " ORDER BY h.created_at, h.request_id",
        (TASK_OWNER, now - stuck_after),
    )
    return [rules.stuck_line(schema.to_hold(r), now, r["last_seen"]) for r in rows]


def _negatives(db: Db) -> list[str]:
    out = []
    negative = fetch_all(db, "SELECT name, balance FROM users WHERE balance < 0 ORDER BY name")
    overages: dict[str, list[sqlite3.Row]] = {}
    if negative:  # one pass over the ledger (it has no index by account), not one per user
        sql = "SELECT account, id, d_balance, request_id FROM ledger WHERE kind = 'overage' ORDER BY id"
        for e in fetch_all(db, sql):
            overages.setdefault(str(e["account"]), []).append(e)
    for u in negative:
        entries = overages.get(f"wallet:{u['name']}", [])
        listed = ", ".join(f"#{e['id']} {e['d_balance']} (request {e['request_id']})" for e in entries)
        out.append(f"wallet:{u['name']} balance {u['balance']}; overage entries: {listed or 'none'}")
    return out


def run_audit(db: Db, now: float, orphan_after: float, stuck_after: float | None = None) -> AuditReport:
    """Every check, inside the caller's read transaction (one consistent snapshot)."""
    mismatches = _account_checks(db) + _usage_checks(db) + _record_checks(db) + task_audit(db)
    return AuditReport(
        mismatches=mismatches,
        orphans=_orphans(db, now, orphan_after),
        negatives=_negatives(db),
        stuck=_stuck(db, now, stuck_after),
    )
