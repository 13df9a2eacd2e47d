"""A plugin's own call to a configured upstream, outside any client request.

Billing polls async tasks this way: the upstream's credentials, base URL (including the
built-in mock's, known only once it started) and the pooled session stay in the core, and
the plugin names the upstream and the path as a client would write it (`/v1/videos/abc`:
the version prefix is handled as for a proxied request). Reached through the host:
`await host_of(app).call_upstream("openai", "GET", "/v1/videos/abc")`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from proxy.context import Dialect
from proxy.dialects import VERSION_PREFIX
from proxy.upstream import UpstreamPool, build_headers_for_listing

__all__ = ["UpstreamCallError", "UpstreamCaller", "UpstreamReply"]

#: The most of an answer a call reads (task status documents are small).
MAX_REPLY = 4 << 20


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An upstream's whole answer: status, headers (lower-case names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamCallError(Exception):
    """The call could not be made or answered: unknown upstream, unreachable, timed out,
    or an answer larger than `MAX_REPLY`."""


class UpstreamCaller:
    """Calls upstreams by name over the app's pooled session (open while the app runs)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    async def __call__(
        self,
        upstream: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> UpstreamReply:
        """Send `method path` to the upstream named `upstream` with its credentials."""
        up = next((u for u in self._pool.upstreams if u.name == upstream), None)
        if up is None:
            raise UpstreamCallError(f"upstream {upstream!r} is not configured")
        session = self._pool.session
        if session is None:
            raise UpstreamCallError("the upstream session is closed (the app is not running)")
        prefix = VERSION_PREFIX[Dialect.OPENAI]
        if up.config.type != "mock" and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        sent: CIMultiDict[str] = CIMultiDict(headers or {})
        sent.update(build_headers_for_listing(up))
        try:
            async with session.request(
                method,
                up.base_url + path,
                data=body,
                headers=sent,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=up.config.connect_timeout),
            ) as resp:
                data = await resp.content.read(MAX_REPLY + 1)
                if len(data) > MAX_REPLY:
                    raise UpstreamCallError(f"upstream {upstream} answered more than {MAX_REPLY} bytes")
                return UpstreamReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamCallError(f"upstream {upstream} could not be called: {type(exc).__name__}") from None
