"""The audit of one user's accounts, computed from an atomic snapshot (pure, no I/O).

`RedisStore.audit` reads each user's hashes, ledger and open holds in one script and
hands them here. The checks match `sqlite_audit`:
- every wallet, key and subscription: balance and reserved equal the sum of its entries,
  and reserved equals the open holds drawing on it;
- used and request counters (user, key, subscription, upstream) equal what the resolution
  entries recorded (each funding-source resolution entry carries the charge `c`, the key,
  whether it counted `n` and the upstream `up`);
- one consume-log row per resolution, and no entry for an account that does not exist;
- orphans: open holds of silent instances or past their ttl;
- stuck (only with `stuck_after`): open holds with no sign of life for that long;
- negatives (informational): wallets below zero, with their overage entries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from plugins.billing.store.redis.rows import to_hold
from plugins.billing.store.rules import is_stuck, stuck_line
from plugins.billing.store.tasks import TASK_OWNER

_CHARGES = ("capture", "expire")


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    """What one user's accounts looked like at one instant."""

    user: Mapping[str, str]
    ledger: Sequence[str]
    keys: Sequence[Mapping[str, str]]
    subs: Sequence[Mapping[str, str]]
    open_ids: Sequence[str]
    holds: Sequence[Mapping[str, str]]
    log_rows: int
    upstream_used: Mapping[str, str]
    upstream_count: Mapping[str, str]


@dataclass(slots=True)
class Findings:
    """The four lists of an AuditReport, filled user by user."""

    mismatches: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Sums:
    balance: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reserved: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged_user: int = 0
    counted_user: int = 0
    resolutions: int = 0
    charged_key: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counted_key: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    upstream_used: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    upstream_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    paid_sub: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    overages: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _sum_ledger(entries: Sequence[str]) -> _Sums:
    sums = _Sums()
    for raw in entries:
        e = json.loads(raw)
        acct, kind, d_b = e["a"], e["k"], int(e["b"])
        sums.balance[acct] += d_b
        sums.reserved[acct] += int(e["r"])
        if "c" in e:  # the funding source's resolution entry
            _add_resolution(sums, e)
        if kind in _CHARGES and acct.startswith("sub:"):
            sums.paid_sub[acct] -= d_b
        if kind == "overage":
            sums.overages[acct].append(f"{e['ref']} {d_b}")
    return sums


def _add_resolution(sums: _Sums, e: Mapping[str, str]) -> None:
    charge, counted = int(e["c"]), int(e.get("n") or 0)
    sums.resolutions += 1
    sums.charged_user += charge
    sums.counted_user += counted
    sums.charged_key[e["key"]] += charge
    sums.counted_key[e["key"]] += counted
    if e.get("up"):
        sums.upstream_used[e["up"]] += charge
        sums.upstream_count[e["up"]] += counted


def _open_reserved(holds: Sequence[Mapping[str, str]], wallet: str) -> dict[str, int]:
    held: dict[str, int] = defaultdict(int)
    for h in holds:
        source = f"sub:{h['subscription_id']}" if h["source"] == "subscription" else wallet
        held[source] += int(h["amount"])
        held[f"key:{h['key_id']}"] += int(h["key_amount"])
    return held


def _check_account(
    out: Findings, acct: str, h: Mapping[str, str], sums: _Sums, held: Mapping[str, int], used: int
) -> None:
    """Balance and reserved against the ledger and the open holds; used against charges."""
    balance, reserved = int(h["balance"]), int(h["reserved"])
    if balance != sums.balance.get(acct, 0):
        out.mismatches.append(f"{acct}: balance {balance} != ledger {sums.balance.get(acct, 0)}")
    if reserved != sums.reserved.get(acct, 0):
        out.mismatches.append(f"{acct}: reserved {reserved} != ledger {sums.reserved.get(acct, 0)}")
    if reserved != held.get(acct, 0):
        out.mismatches.append(f"{acct}: reserved {reserved} != open holds {held.get(acct, 0)}")
    if int(h["used"]) != used:
        out.mismatches.append(f"{acct}: used {h['used']} != captured {used}")
    if balance < 0 and acct.startswith("wallet:"):
        spill = ", ".join(sums.overages.get(acct, [])) or "none"
        out.negatives.append(f"{acct}: balance {balance} (overage entries: {spill})")


def _check_holds(
    out: Findings,
    snap: UserSnapshot,
    heartbeats: Mapping[str, float],
    now: float,
    orphan_after: float,
    stuck_after: float | None,
) -> None:
    for rid, h in zip(snap.open_ids, snap.holds, strict=True):
        if h.get("state") != "open":
            out.mismatches.append(f"hold {rid}: in the open set but {h.get('state') or 'missing'}")
            continue
        seen = heartbeats.get(h["instance_id"])
        if h["instance_id"] == TASK_OWNER:  # lives as long as its task (checked by task_audit)
            continue
        if stuck_after is not None:
            hold = to_hold(h)
            if is_stuck(hold, now, stuck_after):
                out.stuck.append(stuck_line(hold, now, seen))
        if float(h["expires_at"]) < now:
            out.orphans.append(f"hold {rid} (user {h['user']}): expired at {h['expires_at']}")
        elif seen is None or seen < now - orphan_after:
            last = "never" if seen is None else f"last at {seen}"
            out.orphans.append(f"hold {rid} (user {h['user']}): instance {h['instance_id']} seen {last}")


def audit_user(
    out: Findings,
    snap: UserSnapshot,
    heartbeats: Mapping[str, float],
    now: float,
    orphan_after: float,
    stuck_after: float | None = None,
) -> None:
    """Append to `out` what is wrong with one user's accounts and holds."""
    name = snap.user["name"]
    wallet = f"wallet:{name}"
    sums = _sum_ledger(snap.ledger)
    open_holds = [h for h in snap.holds if h.get("state") == "open"]
    held = _open_reserved(open_holds, wallet)
    _check_account(out, wallet, snap.user, sums, held, sums.charged_user)
    known = {wallet}
    for k in snap.keys:
        acct = f"key:{k['id']}"
        known.add(acct)
        _check_account(out, acct, k, sums, held, sums.charged_key.get(k["id"], 0))
    for s in snap.subs:
        acct = f"sub:{s['id']}"
        known.add(acct)
        _check_account(out, acct, s, sums, held, sums.paid_sub.get(acct, 0))
    for acct in sorted(set(sums.balance) - known):
        out.mismatches.append(f"{acct}: ledger entries for an account that does not exist")
    _check_counts(out, snap, sums)
    _check_holds(out, snap, heartbeats, now, orphan_after, stuck_after)


def _diff(out: Findings, label: str, stored: int, expected: int, source: str) -> None:
    if stored != expected:
        out.mismatches.append(f"{label} {stored} != {source} {expected}")


def _check_counts(out: Findings, snap: UserSnapshot, sums: _Sums) -> None:
    """Request counters and log rows against the resolution entries."""
    name = snap.user["name"]
    _diff(out, f"user:{name} request_count", int(snap.user["request_count"]), sums.counted_user, "ledger")
    for k in snap.keys:
        _diff(out, f"key:{k['id']} request_count", int(k["request_count"]), sums.counted_key.get(k["id"], 0), "ledger")
    _diff(out, f"user:{name} consume-log rows", snap.log_rows, sums.resolutions, "resolutions")
    for up in sorted(set(snap.upstream_used) | set(snap.upstream_count) | set(sums.upstream_used)):
        label = f"upstream:{up} (user {name})"
        _diff(out, f"{label} used", int(snap.upstream_used.get(up, 0)), sums.upstream_used.get(up, 0), "ledger")
        _diff(
            out, f"{label} request_count", int(snap.upstream_count.get(up, 0)), sums.upstream_count.get(up, 0), "ledger"
        )
