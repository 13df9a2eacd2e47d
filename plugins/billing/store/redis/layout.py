"""Key names, value codecs, Lua loading and the memory of held requests for `RedisStore`.

Hashes come back from Redis as flat `str -> str` maps; the functions here turn them into
the frozen values of `plugins.billing.store.base`. Optional values are stored as JSON (`null` for
None) so that "" and None stay distinct.

Key layout (P is the prefix, "weir" by default). Everything about one user shares the hash
tag `{u:<name>}`, so each script passes all its keys in KEYS and stays in one Redis Cluster
slot (`{`, `}` and `%` in a name are %-escaped inside the tag):

    P:{u:N}:user          hash   name, group, preference, balance, reserved, used, request_count
    P:{u:N}:keys          list   key ids, oldest first
    P:{u:N}:key:<id>      hash   one API key (its SHA-256, never the clear key), totals
    P:{u:N}:subs          list   subscription ids, in grant order
    P:{u:N}:sub:<id>      hash   one subscription, with its current period and balance
    P:{u:N}:submeta       hash   sub id -> JSON of its start/end/period/models (only a
                                 cancellation changes one: its end moves earlier)
    P:{u:N}:hold:<rid>    hash   one hold; kept after resolution with state/charged/overage
    P:{u:N}:open          set    request ids of open holds
    P:{u:N}:unmarked      string set when a resolver dropped the user from P:{openusers}
    P:{u:N}:ledger        list   JSON entries {a: account, k: kind, b, r, t, ref, ...}
    P:{u:N}:log           hash   log id -> consume-log row JSON
    P:{u:N}:logidx        zset   log ids, scored by id
    P:{u:N}:up:used|count hash   upstream -> quota / requests (summed over users on read)

Global indexes, each under its own tag, written in a separate step:

    P:{users}       set    user names            P:{requests}   hash  request id -> user
    P:{keyhash}     hash   key hash -> "id user"  P:{keyid}      hash  key id -> user
    P:{subid}       hash   subscription id -> user (subscriptions granted before it: found by a scan)
    P:{openusers}   set    users that may have open holds (scanned by the orphan resolver)
    P:{plans}       hash   plan name -> JSON      P:{instances}  hash  instance -> heartbeat
    P:{prices}:head string price version head     P:{prices}:versions hash number -> JSON
    P:{logs}:seq    string log id counter         P:{logs}:idx   zset  "<id>:<user>" by id

Async tasks (`plugins.billing.store.redis.tasks`): `P:{u:N}:task:<id>` (hash, the task) and
`P:{u:N}:tasks` (zset, the user's task ids by creation) in the user's slot; globally
`P:{tasks}:owner` (hash, task id -> user), `P:{tasks}:due` (zset, open task ids by next
poll: the poll leases) and `P:{tasks}:all` (zset, every task id by creation).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Generic, NamedTuple, TypeVar

from plugins.billing.store.base import (
    StoreError,
)

SCRIPTS = (
    "create_user",
    "set_user",
    "credit",
    "create_key",
    "set_key_status",
    "grant",
    "rollover",
    "hold",
    "checkpoint",
    "capture",
    "release",
    "expire",
    "snapshot",
    "log_id",
    "forget",
    "save_prices",
    "task_open",
    "task_end",
    "task_note",
    "task_claim",
    "task_snapshot",
    "task_index",
    "update_key",
    "cancel",
    "ledger_head",
)
"""Every Lua script RedisStore registers, by file stem under `plugins/billing/store/redis/lua/`."""


MAX_UNITS = 2**53 - 1
"""The largest amount a Lua number (a double) holds exactly; larger ones are refused."""


def units(value: int, what: str, *, signed: bool = False) -> int:
    """`value` as an amount a script can hold exactly; StoreError naming `what` otherwise."""
    if not signed and value < 0:
        raise StoreError(f"{what} must be >= 0")
    if abs(value) > MAX_UNITS:
        raise StoreError(f"{what} must not exceed {MAX_UNITS} quota units")
    return int(value)


def load_script(name: str) -> str:
    """The source of script `name`: lib.lua, then the libraries it names, then its body.

    A script names a library with a line `-- requires: <lib>` (file `<lib>.lib.lua`).
    """
    folder = resources.files("plugins.billing.store.redis").joinpath("lua")
    body = folder.joinpath(f"{name}.lua").read_text("utf-8")
    parts = [folder.joinpath("lib.lua").read_text("utf-8")]
    for line in body.splitlines():
        if line.startswith("-- requires:"):
            lib = line.split(":", 1)[1].strip()
            parts.append(folder.joinpath(f"{lib}.lib.lua").read_text("utf-8"))
    parts.append(body)
    return "\n".join(parts)


_BASES_KEPT = 50_000


def _tag_safe(name: str) -> str:
    """`name` with the characters that would end or nest a hash tag escaped."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True, slots=True)
class UserKeys:
    """One user's key names, under `base` ("<prefix>:{u:<name>}:"): the fixed ones built once
    per user (`Layout.of`) and kept, since a billed request names about fifteen of them."""

    base: str
    user: str
    open_holds: str
    ledger: str
    unmarked: str
    sub_meta: str
    no_sub: str
    log_rows: str
    log_index: str
    upstream_used: str
    upstream_count: str

    @classmethod
    def under(cls, base: str) -> UserKeys:
        """The names under `base`, in field order (see `Layout` for what each holds)."""
        suffixes = ("user", "open", "ledger", "unmarked", "submeta", "sub:-", "log", "logidx", "up:used", "up:count")
        return cls(base, *(base + suffix for suffix in suffixes))

    def key(self, key_id: str) -> str:
        """An API key hash."""
        return f"{self.base}key:{key_id}"

    def sub(self, sub_id: str) -> str:
        """A subscription hash."""
        return f"{self.base}sub:{sub_id}"

    def hold(self, request_id: str) -> str:
        """A hold hash."""
        return f"{self.base}hold:{request_id}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Every Redis key name, derived from one prefix.

    Per-user keys share the hash tag `{u:<name>}` so one script can touch them all in a
    Redis Cluster; each global index has a tag of its own.
    """

    prefix: str
    # Each user's key names, built once (`of`). Bounded like the store's other memories
    # (cleared when full).
    _users: dict[str, UserKeys] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"redis prefix {self.prefix!r} must be non-empty and brace-free")

    def of(self, user: str) -> UserKeys:
        """The user's key names (see `UserKeys`)."""
        names = self._users.get(user)
        if names is None:
            if len(self._users) >= _BASES_KEPT:
                self._users.clear()
            names = self._users[user] = UserKeys.under(f"{self.prefix}:{{u:{_tag_safe(user)}}}:")
        return names

    def _u(self, user: str, suffix: str) -> str:
        return self.of(user).base + suffix

    def user(self, user: str) -> str:
        """The user hash (wallet totals, counters, group, preference)."""
        return self.of(user).user

    def key(self, user: str, key_id: str) -> str:
        """An API key hash."""
        return self.of(user).key(key_id)

    def key_list(self, user: str) -> str:
        """The user's key ids in creation order (a list)."""
        return self._u(user, "keys")

    def sub(self, user: str, sub_id: str) -> str:
        """A subscription hash."""
        return self.of(user).sub(sub_id)

    def no_sub(self, user: str) -> str:
        """A never-written key in the user's slot, passed when a hold has no subscription."""
        return self.of(user).no_sub

    def sub_list(self, user: str) -> str:
        """The user's subscription ids in grant order (a list)."""
        return self._u(user, "subs")

    def sub_meta(self, user: str) -> str:
        """Subscription id -> JSON (start, end, period, models) for hold filtering; only a
        cancellation changes it (its end moves earlier)."""
        return self.of(user).sub_meta

    def hold(self, user: str, request_id: str) -> str:
        """A hold hash, kept after resolution with its state, charge and overage."""
        return self.of(user).hold(request_id)

    def open_holds(self, user: str) -> str:
        """The request ids of the user's open holds (a set)."""
        return self.of(user).open_holds

    def unmarked(self, user: str) -> str:
        """A flag: a resolver dropped the user's open mark; the next hold reports it."""
        return self.of(user).unmarked

    def ledger(self, user: str) -> str:
        """The append-only ledger of every account of the user (a list of JSON entries)."""
        return self.of(user).ledger

    def log_rows(self, user: str) -> str:
        """Log id -> consume-log row JSON (a hash)."""
        return self.of(user).log_rows

    def log_index(self, user: str) -> str:
        """The user's log ids, scored by id (a sorted set)."""
        return self.of(user).log_index

    def upstream_used(self, user: str) -> str:
        """Upstream name -> quota used by this user's requests (a hash)."""
        return self.of(user).upstream_used

    def upstream_count(self, user: str) -> str:
        """Upstream name -> request count of this user's requests (a hash)."""
        return self.of(user).upstream_count

    def task(self, user: str, task_id: str) -> str:
        """An async task's hash."""
        return self._u(user, f"task:{task_id}")

    def user_tasks(self, user: str) -> str:
        """The user's task ids, scored by creation (a sorted set)."""
        return self._u(user, "tasks")

    @property
    def task_owners(self) -> str:
        """Global hash: task id -> user."""
        return f"{self.prefix}:{{tasks}}:owner"

    @property
    def tasks_due(self) -> str:
        """Global sorted set of open task ids, scored by when to poll them next."""
        return f"{self.prefix}:{{tasks}}:due"

    @property
    def tasks_all(self) -> str:
        """Global sorted set of every task id, scored by creation."""
        return f"{self.prefix}:{{tasks}}:all"

    @property
    def users(self) -> str:
        """Global set of user names."""
        return f"{self.prefix}:{{users}}"

    @property
    def open_users(self) -> str:
        """Global set of users that may have open holds (the orphan resolver scans it)."""
        return f"{self.prefix}:{{openusers}}"

    @property
    def requests(self) -> str:
        """Global hash: request id -> user."""
        return f"{self.prefix}:{{requests}}"

    @property
    def key_hashes(self) -> str:
        """Global hash: SHA-256 of a key -> "<key id> <user>"."""
        return f"{self.prefix}:{{keyhash}}"

    @property
    def key_ids(self) -> str:
        """Global hash: key id -> user."""
        return f"{self.prefix}:{{keyid}}"

    @property
    def sub_ids(self) -> str:
        """Global hash: subscription id -> user."""
        return f"{self.prefix}:{{subid}}"

    @property
    def plans(self) -> str:
        """Global hash: plan name -> plan JSON."""
        return f"{self.prefix}:{{plans}}"

    @property
    def instances(self) -> str:
        """Global hash: instance id -> last heartbeat (epoch seconds)."""
        return f"{self.prefix}:{{instances}}"

    @property
    def log_seq(self) -> str:
        """Global log id counter (shares its tag with the global log index)."""
        return f"{self.prefix}:{{logs}}:seq"

    @property
    def log_global(self) -> str:
        """Global sorted set of "<log id>:<user>", scored by log id."""
        return f"{self.prefix}:{{logs}}:idx"


class Held(NamedTuple):
    """What settling a hold needs to name its keys: all fixed when the hold is made (a
    subscription's meta JSON changes only when it is cancelled, and then the scripts go by
    the subscription's own `end`: a stale copy never rolls it into a period after it).
    A NamedTuple: one is made per hold, and a frozen dataclass's __init__ cost four times as much."""

    user: str
    key_id: str
    subscription_id: str
    sub_meta: str | None


V = TypeVar("V")


class Bounded(Generic[V]):
    """At most `size` entries by key; past that, the one remembered longest ago is forgotten."""

    def __init__(self, size: int = 50_000) -> None:
        """Remember at most `size` entries."""
        self._size = size
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> V | None:
        """What was remembered under `key`, or None."""
        return self._entries.get(key)

    def remember(self, key: str, value: V) -> None:
        """Remember `value` under `key` (as the newest entry)."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        """Forget one entry."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything (the data under the prefix was dropped)."""
        self._entries.clear()


class KnownTerms(Bounded[dict[str, str]]):
    """The subscription terms (id -> meta JSON) last read per user, so a hold can be sent in
    the same round trip as that read. Terms are only ever added, so the hold script can tell
    a stale entry by its count alone (and then the read that came with it is the fresh one).
    A cancellation changes an entry in place (its end moves earlier) without changing the
    count: the hold script checks each subscription's own `end`, so a stale view can still
    offer a cancelled subscription but never draw on it. A user not remembered is guessed
    to have none."""


class HeldMemory(Bounded[Held]):
    """The holds this process made, by request id, so settling them needs no index lookup.

    Bounded: past `size` entries the oldest is forgotten, and a forgotten (or never known)
    request falls back to the global request index. A wrong entry cannot move money: the
    settlement script checks the hold's key and subscription against it.
    """
