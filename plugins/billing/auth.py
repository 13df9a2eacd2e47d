"""Who is calling: the client key, its status, expiry and allowlists (before any hold)."""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections import OrderedDict

from plugins.billing.apikeys import hash_key, matches
from plugins.billing.store.base import ApiKey, Store, StoreUnavailable, User
from proxy.plugin import Reject, RequestContext

STORE_DOWN = Reject(503, "store_unavailable", "the account store is unavailable; the request was not sent")


def store_down() -> Reject:
    """A fresh 503 `store_unavailable` refusal."""
    return Reject(STORE_DOWN.status, STORE_DOWN.code, STORE_DOWN.message)


class KeyCache:
    """A short-lived cache of (key, user) by key digest, bounded in size.

    Safe for money: the hold re-checks the key's status, expiry and quota and the funding
    source atomically in the store, so a cached entry can at worst apply an allowlist, a
    group or a user's disabled flag that changed less than `ttl` seconds ago. Unknown keys
    are never cached.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, ApiKey, User]] = OrderedDict()

    def get(self, digest: str) -> tuple[ApiKey, User] | None:
        """The cached pair, if fresh."""
        hit = self._entries.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1], hit[2]

    def put(self, digest: str, key: ApiKey, user: User) -> None:
        """Remember a pair for `ttl` seconds, evicting the oldest beyond `max_entries`."""
        if self.ttl <= 0:
            return
        self._entries[digest] = (time.monotonic() + self.ttl, key, user)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


async def authenticate(
    store: Store, ctx: RequestContext, cache: KeyCache | None = None, now: float | None = None
) -> tuple[ApiKey, User]:
    """The caller's key and user, or a `Reject` in the endpoint's terms.

    Keys are looked up by their SHA-256 (timing reveals nothing about the clear key) and
    confirmed with a constant-time comparison. A disabled user is refused first (403
    `user_disabled`), then the key's own state (`check_key`).
    """
    clear = ctx.api_key
    if not clear:
        raise Reject(401, "invalid_api_key", "no API key: send Authorization: Bearer <key> (or x-api-key)")
    digest = hash_key(clear)  # no cache keyed by the clear key: only digests are kept
    found = cache.get(digest) if cache is not None else None
    if found is None:
        try:
            key = await store.find_key(digest)
            user = await store.get_user(key.user) if key is not None else None
        except StoreUnavailable:
            raise store_down() from None
        if key is None or user is None or not matches(clear, digest):
            raise Reject(401, "invalid_api_key", "the API key is not valid")
        if cache is not None:
            cache.put(digest, key, user)
    else:
        key, user = found
    if user.disabled:
        raise Reject(403, "user_disabled", "the account this API key belongs to is disabled")
    check_key(key, ctx, time.time() if now is None else now)
    return key, user


def check_key(key: ApiKey, ctx: RequestContext, now: float) -> None:
    """Status, expiry, model allowlist and IP allowlist; raises `Reject` (403)."""
    if key.status != "active":
        raise Reject(403, "key_disabled", f"the API key is {key.status}")
    if key.expires_at is not None and key.expires_at <= now:
        raise Reject(403, "key_expired", "the API key has expired")
    if key.models and ctx.model is not None and not any(fnmatch.fnmatchcase(ctx.model, g) for g in key.models):
        raise Reject(403, "model_not_allowed", f"this key may not use model {ctx.model!r}")
    if key.ips and not ip_allowed(ctx.client_ip, key.ips):
        raise Reject(403, "ip_not_allowed", "this key may not be used from this address")


def ip_allowed(address: str, cidrs: tuple[str, ...]) -> bool:
    """True when `address` lies in one of `cidrs` (an unparseable address never does)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False
