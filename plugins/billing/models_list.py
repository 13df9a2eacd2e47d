"""`/v1/models` as the caller's key sees it: only the models its allowlist permits."""

from __future__ import annotations

import fnmatch

import orjson

__all__ = ["keep_allowed"]


def keep_allowed(body: bytes, allowed: tuple[str, ...]) -> bytes:
    """The OpenAI model list in `body` without the entries no glob of `allowed` matches.

    A body that is not the list Weir builds (`{"object": "list", "data": [...]}`) is left
    as it is: the core builds it, so that would be a bug to see, not to hide.
    """
    try:
        listing = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    items = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        return body
    listing["data"] = [
        m
        for m in items
        if isinstance(m, dict)
        and isinstance(m.get("id"), str)
        and any(fnmatch.fnmatchcase(m["id"], g) for g in allowed)
    ]
    return orjson.dumps(listing)
