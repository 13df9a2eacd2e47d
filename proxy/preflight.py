"""The rules `weir serve` applies to a config beyond parsing it, in one place, so that
`weir check-config` (which calls the same function) accepts exactly what `serve` accepts."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from proxy.config import Config, ConfigError
from proxy.loader import load_plugins
from proxy.plugin import Plugin

__all__ = ["check_exposure", "preflight"]


def preflight(config: Config, plugins: Sequence[Plugin] | None = None) -> tuple[list[Plugin], tuple[str, ...]]:
    """Load the plugins proxy.yaml lists (or take `plugins`) and check everything `serve`
    refuses to start with; raises `ConfigError`. Returns the plugins and the warnings that
    startup logs (and `check-config` prints)."""
    loaded = list(plugins) if plugins is not None else load_plugins(config.plugins)
    warnings = check_exposure(config, loaded)
    return loaded, warnings


def check_exposure(config: Config, plugins: Sequence[Plugin]) -> tuple[str, ...]:
    """Refuse a non-loopback `server.host` without an authenticating plugin unless
    `server.allow_unauthenticated` is set; when it is set, the loud warning to give."""
    host = config.server.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or any(p.authenticates for p in plugins):
        return ()
    if not config.server.allow_unauthenticated:
        raise ConfigError(
            "server.host",
            f"refusing to listen on {host} without an authenticating plugin (such as billing); "
            "set server.allow_unauthenticated: true to relay anyone's traffic on your upstream keys",
        )
    return (f"server.allow_unauthenticated is set: anyone who reaches {host} can use your upstream keys",)
