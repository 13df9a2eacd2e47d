"""`GET /v1/models` (and `/v1/models/{model}`): the union of the models every upstream serves.

Entries never name the upstream that serves them (`owned_by` is always `OWNER`): which
provider or account is behind Weir is the operator's business. Plugins narrow the list in
`on_body` (billing keeps the models the caller's key may use).
"""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any

import aiohttp
import orjson

from proxy.upstream import Upstream, UpstreamPool, build_headers_for_listing

_GLOB_CHARS = frozenset("*?[")
#: The neutral `owned_by` of every listed model.
OWNER = "weir"


async def list_models(pool: UpstreamPool) -> list[dict[str, Any]]:
    """Literal model names from the config, plus what each upstream lists (filtered by its
    globs). An upstream that cannot be asked within 5 s, or whose circuit breaker is open,
    contributes only its literal names."""
    found: dict[str, dict[str, Any]] = {}
    for up in pool.upstreams:
        for name in (*up.config.models, *up.config.model_map):
            if not _GLOB_CHARS & set(name):
                found.setdefault(name, _entry(name))
    listed = await asyncio.gather(*(_ask(pool, up) for up in pool.upstreams))
    for up, names in zip(pool.upstreams, listed):
        for name in names:
            if any(fnmatch.fnmatchcase(name, g) for g in up.config.models):
                found.setdefault(name, _entry(name))
    return [found[k] for k in sorted(found)]


def one_model(listing: bytes, model: str) -> bytes | None:
    """The entry for `model` in a (plugin-narrowed) model list, or None."""
    try:
        data = orjson.loads(listing).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    for entry in data if isinstance(data, list) else ():
        if isinstance(entry, dict) and entry.get("id") == model:
            return orjson.dumps(entry)
    return None


def _entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


async def _ask(pool: UpstreamPool, up: Upstream) -> list[str]:
    if pool.session is None or up.config.type not in ("openai", "mock") or up.breaker.is_open:
        return []  # an upstream the breaker skips would only cost the listing its 5 s
    url = up.base_url + ("/v1/models" if up.config.type == "mock" else "/models")
    try:
        async with pool.session.get(
            url, headers=build_headers_for_listing(up), timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            if resp.status != 200:
                return []
            data = orjson.loads(await resp.read())
    except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
        return []
    items = data.get("data") if isinstance(data, dict) else None
    return [m["id"] for m in items or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
