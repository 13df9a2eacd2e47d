"""`server.trusted_proxies` and the rightmost-untrusted reading of X-Forwarded-For."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config import ConfigError, parse_config
from proxy.forwarded import TrustedProxies, client_address, parse_networks

NGINX = TrustedProxies.from_config(["127.0.0.1/32", "::1", "10.0.0.0/8"])


def resolve(peer: str, *headers: str, trusted: TrustedProxies = NGINX) -> str:
    return client_address(peer, list(headers), trusted)


def test_untrusted_peer_ignores_the_header() -> None:
    assert resolve("203.0.113.9", "198.51.100.7") == "203.0.113.9"
    assert resolve("203.0.113.9", "garbage") == "203.0.113.9"
    # Nobody trusted (the default): even a loopback peer is the client.
    assert resolve("127.0.0.1", "198.51.100.7", trusted=TrustedProxies()) == "127.0.0.1"
    assert not TrustedProxies() and NGINX


def test_trusted_peer_takes_the_rightmost_untrusted() -> None:
    assert resolve("127.0.0.1", "198.51.100.7") == "198.51.100.7"
    assert resolve("127.0.0.1", " 198.51.100.7 ") == "198.51.100.7"
    assert resolve("127.0.0.1") == "127.0.0.1"  # no header: the proxy itself
    assert resolve("127.0.0.1", "") == "127.0.0.1"


def test_spoofed_leftmost_entries_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 10.9.9.9, 192.0.2.1"; nginx appended the real peer.
    assert resolve("127.0.0.1", "10.9.9.9, 192.0.2.1, 198.51.100.7") == "198.51.100.7"
    # Even a spoofed *trusted* address left of the real client is never reached.
    assert resolve("127.0.0.1", "127.0.0.1, 198.51.100.7") == "198.51.100.7"


def test_chains_of_trusted_proxies_are_skipped() -> None:
    # client → CDN edge (untrusted, so it is the client we see) → 10.1.1.1 → nginx on loopback
    assert resolve("127.0.0.1", "198.51.100.7, 10.1.1.1") == "198.51.100.7"
    assert resolve("127.0.0.1", "1.1.1.1, 198.51.100.7, 10.2.2.2, 10.1.1.1") == "198.51.100.7"
    # Every address trusted: the leftmost.
    assert resolve("127.0.0.1", "10.3.3.3, 10.2.2.2, 10.1.1.1") == "10.3.3.3"


def test_multiple_headers_are_joined_in_order() -> None:
    assert resolve("127.0.0.1", "1.1.1.1, 198.51.100.7", "10.1.1.1") == "198.51.100.7"
    assert resolve("127.0.0.1", "198.51.100.7", "10.1.1.1, 10.2.2.2") == "198.51.100.7"
    assert resolve("127.0.0.1", "10.3.3.3", "", "10.1.1.1") == "10.3.3.3"


def test_ipv6() -> None:
    assert resolve("::1", "2001:db8::7") == "2001:db8::7"
    assert resolve("::1", "2001:db8::7, 2001:DB8::9") == "2001:db8::9"
    v6 = TrustedProxies.from_config(["2001:db8:1::/48"])
    assert resolve("2001:db8:1::2", "2001:db8::7, 2001:db8:1::5", trusted=v6) == "2001:db8::7"
    # A dual-stack listener reports IPv4 peers as IPv4-mapped; header entries are unwrapped.
    assert resolve("::ffff:127.0.0.1", "::ffff:198.51.100.7") == "198.51.100.7"


def test_a_malformed_entry_stops_the_walk() -> None:
    assert resolve("127.0.0.1", "198.51.100.7, unknown") == "127.0.0.1"
    assert resolve("127.0.0.1", "198.51.100.7, 198.51.100.8:443") == "127.0.0.1"
    assert resolve("127.0.0.1", "198.51.100.7, , 10.1.1.1") == "10.1.1.1"
    assert resolve("127.0.0.1", "198.51.100.7, [2001:db8::1], 10.2.2.2, 10.1.1.1") == "10.2.2.2"
    assert resolve("", "198.51.100.7") == ""  # no peer (a unix socket): nothing trusted


def test_parse_networks() -> None:
    assert parse_networks(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]) == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["127.0.0.1/32", "nginx"], r"server\.trusted_proxies\[1\]: 'nginx' is not an IPv4 or IPv6 network"),
        (["10.0.0.0/33"], r"server\.trusted_proxies\[0\]: '10\.0\.0\.0/33' is not"),
        (
            ["10.0.0.1/8"],
            r"server\.trusted_proxies\[0\]: '10\.0\.0\.1/8' has host bits set; did you mean 10\.0\.0\.0/8\?",
        ),
    ],
)
def test_config_validates_each_entry(entries: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"server": {"trusted_proxies": entries}}, env={})


def test_config_default_trusts_nobody() -> None:
    assert parse_config({}, env={}).server.trusted_proxies == ()
    cfg = parse_config({"server": {"trusted_proxies": ["127.0.0.1/32", "::1"]}}, env={})
    assert cfg.server.trusted_proxies == ("127.0.0.1/32", "::1")
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies: expected a list"):
        parse_config({"server": {"trusted_proxies": "127.0.0.1"}}, env={})
