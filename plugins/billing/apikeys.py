"""Client API keys: generation, hashing and constant-time comparison.

Keys are `wk-` followed by 40 URL-safe random characters. Only the SHA-256 hex digest is
stored; lookups go by digest (so timing reveals nothing about the clear key) and the final
comparison uses `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "wk-"


def hash_key(clear: str) -> str:
    """The stored form of a key: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(clear.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """A new key as (clear text, hash, display hint). Show the clear text once only."""
    clear = PREFIX + secrets.token_urlsafe(30)[:40]
    return clear, hash_key(clear), f"{clear[:6]}…{clear[-4:]}"


def matches(clear: str, stored_hash: str) -> bool:
    """Constant-time check that `clear` hashes to `stored_hash`."""
    return hmac.compare_digest(hash_key(clear), stored_hash)
