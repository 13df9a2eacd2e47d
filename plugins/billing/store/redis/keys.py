"""The API keys of `RedisStore`: creating, finding, listing and revoking them.

A key's hash lives in its user's slot (`{u:<name>}:key:<id>`); two global indexes find it,
`{keyhash}` (hash -> "id user", which also makes a hash unique across users) and `{keyid}`
(id -> user). Both are written before the key's script (`lua/create_key.lua`), so a crash in
between leaves at worst an index entry that names nothing, which readers skip; a script that
fails takes them back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from plugins.billing.store import rules
from plugins.billing.store.base import ApiKey, StoreError
from plugins.billing.store.redis.client import RedisCore, guarded
from plugins.billing.store.redis.layout import Layout, units
from plugins.billing.store.redis.rows import dump_opt, fmt_time, pairs, to_key


class RedisKeys:
    """The key methods of the `Store` protocol on Redis (`RedisStore` adds the rest)."""

    _core: RedisCore
    _k: Layout
    _clock: Callable[[], float]

    @guarded
    async def create_key(
        self,
        user: str,
        key_hash: str,
        *,
        name: str = "",
        quota: int | None = None,
        models: Sequence[str] = (),
        ips: Sequence[str] = (),
        group: str | None = None,
        expires_at: float | None = None,
        hint: str = "",
    ) -> ApiKey:
        """Record a key by its hash (unique across users); a quota is a `credit` entry."""
        k, key_id, now = self._k, "k_" + secrets.token_hex(6), self._clock()
        limit = "" if quota is None else units(quota, "a key quota")
        if await self._core.hget(k.user(user), "name") is None:
            raise StoreError(f"unknown user {user!r}")
        # Claim the hash first: the global index is what makes it unique across slots.
        if not await self._core.call("hsetnx", k.key_hashes, key_hash, f"{key_id} {user}"):
            raise StoreError("a key with this hash already exists")
        await self._core.call("hset", k.key_ids, key_id, user)
        static = [
            "user",
            user,
            "name",
            name,
            "status",
            "active",
            "key_hash",
            key_hash,
            "expires_at",
            "" if expires_at is None else fmt_time(expires_at),
            "models",
            dump_opt(list(models)),
            "ips",
            dump_opt(list(ips)),
            "group",
            dump_opt(group),
            "created_at",
            fmt_time(now),
            "hint",
            hint,
        ]
        try:
            reply = await self._core.run(
                "create_key",
                [k.user(user), k.key(user, key_id), k.key_list(user), k.ledger(user)],
                [key_id, limit, fmt_time(now), *static],
            )
        except StoreError:
            await self._core.batch([("hdel", (k.key_hashes, key_hash)), ("hdel", (k.key_ids, key_id))])
            raise
        return to_key(pairs(reply))

    @guarded
    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by its public id."""
        user = await self._core.hget(self._k.key_ids, key_id)
        h = {} if user is None else await self._core.hgetall(self._k.key(user, key_id))
        return to_key(h) if h else None

    @guarded
    async def find_key(self, key_hash: str) -> ApiKey | None:
        """A key by the SHA-256 hex of its clear text."""
        entry = await self._core.hget(self._k.key_hashes, key_hash)
        if entry is None:
            return None
        key_id, user = entry.split(" ", 1)
        h = await self._core.hgetall(self._k.key(user, key_id))
        return to_key(h) if h.get("key_hash") == key_hash else None

    @guarded
    async def list_keys(self, user: str) -> list[ApiKey]:
        """A user's keys, oldest first."""
        ids = await self._core.lrange(self._k.key_list(user))
        return [to_key(h) for h in await self._core.batch([("hgetall", (self._k.key(user, i),)) for i in ids]) if h]

    @guarded
    async def set_key_status(self, key_id: str, status: str) -> ApiKey:
        """Set "active", "disabled" or "revoked". Revocation is final: StoreError afterwards."""
        if status not in rules.KEY_STATUSES:
            raise StoreError(f"unknown key status {status!r}")
        user = await self._core.hget(self._k.key_ids, key_id)
        if user is None:
            raise StoreError(f"unknown key {key_id!r}")
        return to_key(pairs(await self._core.run("set_key_status", [self._k.key(user, key_id)], [status])))
