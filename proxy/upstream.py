"""Upstreams: one pooled ClientSession, choice by model glob/priority/weight, request building.

Failover itself lives in `proxy.forward`; this module answers "which upstreams, in which
order" and "what exactly do we send to this one".
"""

from __future__ import annotations

import fnmatch
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import is_

import aiohttp
import orjson
from multidict import CIMultiDict

from proxy.breaker import Breaker, BreakerListener
from proxy.config import BreakerConfig, UpstreamConfig
from proxy.context import Dialect, RequestContext
from proxy.dialects import CREDENTIAL_HEADERS, GEMINI_PREFIXES, SPEAKS, VERSION_PREFIX, upstream_auth

#: Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_MAX_ROUTES = 4096

#: Request headers Weir sets itself or must not pass on.
_DROP_REQUEST = (
    HOP_BY_HOP
    | CREDENTIAL_HEADERS
    | {
        "host",
        "content-length",
        "accept-encoding",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
    }
)
#: Response headers dropped on the way back (the body is re-framed and decompressed).
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie", "server", "date"}


def connection_listed(headers: CIMultiDict[str] | object) -> set[str]:
    """Header names listed in `Connection:` (also hop-by-hop for this message)."""
    names: set[str] = set()
    getall = getattr(headers, "getall", None)
    if getall is None:
        return names
    for value in getall("Connection", []):
        names.update(v.strip().lower() for v in value.split(",") if v.strip())
    return names


@dataclass(slots=True)
class Upstream:
    """A configured upstream with its key rotation cursor, resolved base URL and breaker."""

    config: UpstreamConfig
    base_url: str
    breaker: Breaker = field(default_factory=Breaker)
    _keys: Iterator[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = itertools.cycle(self.config.keys or ("",))

    @property
    def name(self) -> str:
        """The upstream's configured name."""
        return self.config.name

    def next_key(self) -> str:
        """The next credential in rotation ('' when none is configured)."""
        return next(self._keys)

    def serves(self, dialect: Dialect, model: str | None) -> bool:
        """True when this upstream speaks `dialect` and one of its globs matches `model`."""
        if dialect not in SPEAKS[self.config.type]:
            return False
        if model is None:
            return True
        return any(fnmatch.fnmatchcase(model, g) for g in self.config.models) or model in self.config.model_map

    def map_model(self, model: str | None) -> str | None:
        """The model name this upstream knows `model` by."""
        if model is None:
            return None
        return self.config.model_map.get(model, model)


def _breaker(config: UpstreamConfig, default: BreakerConfig | None, listener: BreakerListener | None) -> Breaker:
    chosen = config.breaker or default
    if chosen is None:
        return Breaker(config.name)
    if listener is None:
        return Breaker.from_config(config.name, chosen)
    return Breaker.from_config(config.name, chosen, on_change=listener)


class UpstreamPool:
    """All upstreams plus the one pooled ClientSession (created in the app lifespan)."""

    def __init__(
        self,
        configs: tuple[UpstreamConfig, ...],
        rng: random.Random | None = None,
        *,
        breaker: BreakerConfig | None = None,
        on_breaker: BreakerListener | None = None,
    ) -> None:
        """`breaker`: the default for upstreams without their own (None: no breaker);
        `on_breaker` hears every breaker's state changes (the metrics)."""
        self.upstreams = [Upstream(c, c.base_url.rstrip("/"), _breaker(c, breaker, on_breaker)) for c in configs]
        self.session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()
        # (dialect, model) -> able upstreams grouped by priority; bounded by _MAX_ROUTES.
        self._routes: dict[tuple[Dialect, str | None], tuple[tuple[Upstream, ...], ...]] = {}
        self._seen: tuple[Upstream, ...] = tuple(self.upstreams)

    async def open(self) -> None:
        """Create the pooled session."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the pooled session."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    def candidates(self, dialect: Dialect, model: str | None) -> list[Upstream]:
        """Upstreams able to serve the request: lower priority first, weighted shuffle within."""
        # `map(is_, ...)` compares by identity without a Python frame per upstream.
        if len(self._seen) != len(self.upstreams) or not all(map(is_, self._seen, self.upstreams)):
            # The list was changed in place (tests, future reloads): forget cached routes.
            self._seen = tuple(self.upstreams)
            self._routes.clear()
        groups = self._routes.get((dialect, model))
        if groups is None:
            groups = self._route(dialect, model)
        if len(groups) == 1 and len(groups[0]) == 1:  # one upstream serves it: nothing to order
            return [groups[0][0]]
        ordered: list[Upstream] = []
        for group in groups:
            if len(group) == 1:
                ordered.append(group[0])
            else:
                ordered.extend(self._weighted_order(list(group)))
        return ordered

    def _route(self, dialect: Dialect, model: str | None) -> tuple[tuple[Upstream, ...], ...]:
        able = sorted((u for u in self.upstreams if u.serves(dialect, model)), key=lambda u: u.config.priority)
        groups = tuple(tuple(g) for _, g in itertools.groupby(able, key=lambda u: u.config.priority))
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()  # client-chosen model names must not grow this without bound
        self._routes[(dialect, model)] = groups
        return groups

    def _weighted_order(self, group: list[Upstream]) -> list[Upstream]:
        out: list[Upstream] = []
        while group:
            pick = self._rng.choices(group, weights=[u.config.weight for u in group])[0]
            group.remove(pick)
            out.append(pick)
        return out


def build_url(up: Upstream, ctx: RequestContext, upstream_model: str | None) -> str:
    """The upstream URL: base_url + the path after the dialect's version prefix (+ query).
    The path is the client's, or the one a plugin pinned with `ctx.send_to`."""
    target = ctx.upstream_target
    path = target.path if target is not None and target.path is not None else ctx.path
    # The built-in mock serves every dialect under its own version prefixes.
    if up.config.type != "mock":
        path = _strip_version(ctx.dialect, path)
    if ctx.dialect is Dialect.GEMINI and upstream_model and ctx.model and upstream_model != ctx.model:
        path = path.replace(f"/models/{ctx.model}:", f"/models/{upstream_model}:", 1)
    query = [(k, v) for k, v in ctx.query.items() if k != "key"]
    url = up.base_url + path
    if query:
        url += "?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in query)
    return url


def _strip_version(dialect: Dialect, path: str) -> str:
    """The path after the client's version prefix (`base_url` carries the upstream's own)."""
    prefixes = GEMINI_PREFIXES if dialect is Dialect.GEMINI else (VERSION_PREFIX[dialect],)
    for prefix in prefixes:
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def build_headers(up: Upstream, ctx: RequestContext, key: str) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop, credentials and proxy headers; plus upstream auth."""
    drop = _DROP_REQUEST | connection_listed(ctx.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in ctx.headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    for name, value in up.config.headers.items():
        out[name] = value
    for name, value in ctx.upstream_headers.items():
        if name.lower() not in HOP_BY_HOP:
            out[name] = value
    if key:
        for name, value in upstream_auth(up.config.type, key).items():
            out[name] = value
    return out


def build_body(ctx: RequestContext, upstream_model: str | None) -> bytes:
    """The request body for this upstream: the model field rewritten when it is mapped."""
    if ctx.json is not None and upstream_model and ctx.model and upstream_model != ctx.model and "model" in ctx.json:
        return orjson.dumps({**ctx.json, "model": upstream_model})
    return ctx.body


def response_headers(headers: CIMultiDict[str] | object) -> CIMultiDict[str]:
    """Upstream response headers that may be relayed to the client."""
    drop = _DROP_RESPONSE | connection_listed(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in getattr(headers, "items")():  # noqa: B009 (typed as object: any multidict)
        if name.lower() not in drop:
            out.add(name, value)
    return out


def build_headers_for_listing(up: Upstream) -> dict[str, str]:
    """Headers for Weir's own call to an upstream's model list."""
    headers = dict(up.config.headers)
    key = up.next_key()
    if key:
        headers.update(upstream_auth(up.config.type, key))
    return headers
