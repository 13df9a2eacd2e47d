"""RedisStore's values as Redis holds them, and back: hashes and JSON to `User`, `ApiKey`,
`Plan`, `Subscription`, `Hold` and `LogRow`, and the few encodings the Lua scripts share
(times, optional values, a subscription's period). The keys themselves are in `layout`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import orjson

from plugins.billing.store import rules
from plugins.billing.store.base import (
    ApiKey,
    FundingSource,
    Hold,
    HoldState,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Subscription,
    User,
)

_LOG_FIELDS = frozenset(LogDetails._fields)


def fmt_time(x: float) -> str:
    """A time as stored and passed to scripts. Seventeen significant digits give back the
    same float (as `repr` does, at half the cost: its shortest form takes a search)."""
    return "%.17g" % x


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat [field, value, ...] reply (what scripts return for HGETALL) as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def dump_opt(value: object) -> str:
    """An optional or list value as stored: JSON."""
    return json.dumps(value)


def _strs(raw: str) -> tuple[str, ...]:
    return tuple(str(x) for x in json.loads(raw))


def to_user(h: Mapping[str, str]) -> User:
    """A user hash as a User."""
    return User(
        name=h["name"],
        group=h["group"],
        preference=Preference(h["preference"]),
        balance=int(h["balance"]),
        reserved=int(h["reserved"]),
        used=int(h["used"]),
        request_count=int(h["request_count"]),
        created_at=float(h["created_at"]),
        disabled=h.get("disabled") == "1",
    )


def to_key(h: Mapping[str, str]) -> ApiKey:
    """An API key hash as an ApiKey (the stored hash of the key is not exposed)."""
    quota = h["quota"]
    group = json.loads(h["group"])
    return ApiKey(
        id=h["id"],
        user=h["user"],
        name=h["name"],
        status=h["status"],
        expires_at=float(h["expires_at"]) if h["expires_at"] else None,
        quota=int(quota) if quota else None,
        balance=int(h["balance"]),
        reserved=int(h["reserved"]),
        used=int(h["used"]),
        request_count=int(h["request_count"]),
        models=_strs(h["models"]),
        ips=_strs(h["ips"]),
        group=None if group is None else str(group),
        created_at=float(h["created_at"]),
        hint=h.get("hint", ""),
    )


def plan_json(plan: Plan) -> str:
    """A plan as stored in the plans hash."""
    return json.dumps(
        {
            "name": plan.name,
            "quota": plan.quota,
            "period": plan.period,
            "duration_days": plan.duration_days,
            "models": list(plan.models),
        }
    )


def to_plan(raw: str) -> Plan:
    """A stored plan JSON as a Plan."""
    d = json.loads(raw)
    days = d["duration_days"]
    return Plan(
        name=str(d["name"]),
        quota=int(d["quota"]),
        period=str(d["period"]),
        duration_days=None if days is None else int(days),
        models=tuple(str(m) for m in d["models"]),
    )


def to_subscription(h: Mapping[str, str]) -> Subscription:
    """A subscription hash as a Subscription."""
    return Subscription(
        id=h["id"],
        user=h["user"],
        plan=h["plan"],
        quota=int(h["quota"]),
        period=h["period"],
        start=float(h["start"]),
        end=float(h["end"]),
        period_start=float(h["period_start"]),
        balance=int(h["balance"]),
        reserved=int(h["reserved"]),
        used=int(h["used"]),
        models=_strs(h["models"]),
        cancelled_at=float(h["cancelled_at"]) if h.get("cancelled_at") else None,
    )


def to_hold(h: Mapping[str, str]) -> Hold:
    """A hold hash as a Hold."""
    checkpoint, touched = h.get("checkpoint", ""), h.get("touched_at", "")
    return Hold(
        request_id=h["request_id"],
        user=h["user"],
        key_id=h["key_id"],
        source=FundingSource(h["source"]),
        subscription_id=h["subscription_id"] or None,
        amount=int(h["amount"]),
        key_amount=int(h["key_amount"]),
        price_version=h["price_version"],
        instance_id=h["instance_id"],
        created_at=float(h["created_at"]),
        expires_at=float(h["expires_at"]),
        state=HoldState(h["state"]),
        checkpoint=int(checkpoint) if checkpoint else None,
        touched_at=float(touched) if touched else None,
    )


def details_json(details: LogDetails) -> str:
    """LogDetails as a settlement script takes them: their JSON object (every field), as a
    JSON string literal, which the script embeds in the log row as it is (escaping it in
    Lua cost ~13k instructions of redis-server per settlement; orjson does it in ~1 µs)."""
    return orjson.dumps(orjson.dumps(details._asdict()).decode()).decode()


def to_log_row(raw: str) -> LogRow:
    """A stored log row JSON as a LogRow.

    The script may override `usage_source` (orphans) and supplies the key's name for
    callers that gave none.
    """
    d = json.loads(raw)
    detail = {k: v for k, v in json.loads(d["details"]).items() if k in _LOG_FIELDS}
    if d.get("usage_source"):
        detail["usage_source"] = d["usage_source"]
    if not detail.get("key_name") and d.get("key_name"):
        detail["key_name"] = d["key_name"]
    return LogRow(
        id=int(d["id"]),
        ts=float(d["ts"]),
        request_id=d["request_id"],
        user=d["user"],
        key_id=d["key_id"],
        source=d["source"],
        estimate=int(d["estimate"]),
        charge=int(d["charge"]),
        overage=int(d["overage"]),
        price_version=d["price_version"],
        details=LogDetails(**detail),
    )


def sub_target(meta_json: str | None, now: float) -> str:
    """A subscription's current period start as ARGV; "" (no rollover) unless it is active."""
    if meta_json is None:
        return ""
    m = json.loads(meta_json)
    start, end = float(m["start"]), float(m["end"])
    return fmt_time(rules.period_start(start, m["period"], now)) if rules.is_active(start, end, now) else ""


def usable_subscriptions(metas: dict[str, str], now: float, model: str) -> list[tuple[str, str]]:
    """(id, current period start) of the subscriptions a hold may use, by (end, id)."""
    usable: list[tuple[float, str, str]] = []
    for sub_id, raw in metas.items():
        m = json.loads(raw)
        start, end = float(m["start"]), float(m["end"])
        if rules.is_active(start, end, now) and rules.model_allowed(m["models"], model):
            usable.append((end, sub_id, fmt_time(rules.period_start(start, m["period"], now))))
    return [(sub_id, target) for _, sub_id, target in sorted(usable)]
