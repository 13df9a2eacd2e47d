"""The listening sockets of `weir serve`, bound before anything else starts.

Binding first means a taken port (or an address this host does not have, or a privileged
port) is one clear error before the store opens or any plugin starts, and that nothing
claims to be serving until the sockets really are bound. The sockets are bound here as
asyncio's `create_server` would bind them for a host name (every address it resolves to,
SO_REUSEADDR, IPv6 sockets IPv6-only); aiohttp starts listening on them. With `--workers`
the supervisor binds once this way to check the address, then binds each worker's sockets
with SO_REUSEPORT (proxy/supervisor.py).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

__all__ = ["ListenError", "bind_sockets", "display_address"]

#: errno → (what went wrong, what to do about it).
_REASONS: dict[int, tuple[str, str]] = {
    errno.EADDRINUSE: ("address already in use", "is another weir running? use --port or server.port"),
    errno.EADDRNOTAVAIL: ("address not available", "no interface of this host has it; use --host or server.host"),
    errno.EACCES: ("permission denied", "ports below 1024 need privileges; use --port or server.port"),
    errno.EPERM: ("permission denied", "use --port or server.port"),
}


class ListenError(Exception):
    """The proxy cannot listen on its address; the message is one line for the operator."""


def display_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound (not yet listening), non-blocking sockets for every address `host` resolves to.

    `reuse_port` sets SO_REUSEPORT, so that the sockets of several worker processes share
    the port and the kernel spreads new connections over those listening (`weir serve
    --workers`). Raises `ListenError` naming `host:port` and the reason when none can be
    bound, or when one fails for a reason other than its address family being unavailable."""
    where = display_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {where}: cannot resolve {host!r}: {exc.strerror} (use --host or server.host)"
        ) from None
    sockets: list[socket.socket] = []
    last: OSError | None = None
    try:
        for family, _type, proto, _name, address in dict.fromkeys(infos):
            try:
                sockets.append(_bind_one(family, proto, address, reuse_port))
            except OSError as exc:
                # Like asyncio: an address family this host has disabled is skipped.
                if exc.errno != errno.EADDRNOTAVAIL or len(infos) == 1:
                    raise
                last = exc
        if not sockets:
            raise last or OSError(errno.EADDRNOTAVAIL, "no address to bind")
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {where}: {_reason(exc)}") from None
    return sockets


def _bind_one(family: int, proto: int, address: Any, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _reason(exc: OSError) -> str:
    if exc.errno in _REASONS:
        what, hint = _REASONS[exc.errno]
        return f"{what} ({hint})"
    return (exc.strerror or str(exc)).lower()
