"""The client's address behind trusted reverse proxies (`server.trusted_proxies`).

Behind a TLS-terminating proxy (nginx, Caddy) every TCP peer is the proxy itself. When the
peer lies in a trusted network, the client is read from `X-Forwarded-For` by the
rightmost-untrusted rule: walk the addresses from the right (each proxy appends the peer it
saw), skip those that are themselves trusted proxies, and take the first untrusted one. What
a client writes into the header itself sits to the left of everything a trusted proxy
appended, so it is never reached while an untrusted address stands to its right. An
untrusted peer's header is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from proxy.dataclass_builder import ConfigError

__all__ = ["Network", "TrustedProxies", "client_address", "parse_networks"]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str], path: str = "server.trusted_proxies") -> tuple[Network, ...]:
    """Each entry as an IPv4/IPv6 network (a bare address is a /32 or /128).

    Raises `ConfigError` naming `path[i]` for an entry that is not a network, or that has
    host bits set (`10.0.0.1/8`: the intended network is ambiguous, so say it exactly).
    """
    networks: list[Network] = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        try:
            networks.append(ipaddress.ip_network(entry.strip()))
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ConfigError(where, f"{entry!r} is not an IPv4 or IPv6 network (CIDR)") from exc
            raise ConfigError(where, f"{entry!r} has host bits set; did you mean {loose}?") from exc
    return tuple(networks)


def _address(text: str) -> Address | None:
    """`text` as an address (IPv4-mapped IPv6 unwrapped to IPv4), or None if malformed."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The parsed `server.trusted_proxies`; false when empty (then nobody is trusted)."""

    __slots__ = ("networks",)

    def __init__(self, networks: Sequence[Network] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def from_config(cls, entries: Iterable[str]) -> TrustedProxies:
        """Parse the configured CIDRs once, at startup."""
        return cls(parse_networks(entries))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: Address) -> bool:
        """True when `ip` lies in one of the trusted networks."""
        return any(ip in net for net in self.networks)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: TrustedProxies) -> str:
    """The client's address: the TCP `peer`, or from `X-Forwarded-For` if the peer is trusted.

    `forwarded_for` holds every X-Forwarded-For header value, in order (they are joined).
    Walking from the right, trusted addresses are skipped and the first untrusted one is
    the client; if all are trusted, the leftmost. A malformed entry stops the walk: the
    last good address (or the peer) is the answer. Addresses read from the header come
    back normalized (`::ffff:10.0.0.1` → `10.0.0.1`); an untrusted peer comes back as is.
    """
    ip = _address(peer) if peer else None
    if ip is None or not trusted.trusts(ip):
        return peer
    result = peer
    entries = ",".join(v for v in forwarded_for if v.strip()).split(",") if forwarded_for else []
    for raw in reversed(entries):
        hop = _address(raw)
        if hop is None:
            break
        result = str(hop)
        if not trusted.trusts(hop):
            break
    return result
