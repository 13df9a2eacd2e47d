"""proxy.yaml → frozen dataclasses.

`${ENV}` and `${ENV:-default}` are interpolated in every string value before types are
checked. Unknown keys are errors that name their YAML path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.dataclass_builder import ConfigError, build
from proxy.forwarded import parse_networks
from proxy.task_apis import TaskApiConfig, check_task_apis

__all__ = [
    "AdminConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "PluginSpec",
    "ServerConfig",
    "StoreConfig",
    "UpstreamConfig",
    "host_problem",
    "load_config",
    "parse_config",
    "port_problem",
    "with_listener",
    "workers_problem",
]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The listener and request limits.

    `trusted_proxies`: CIDRs of the reverse proxies whose `X-Forwarded-For` names the
    client (proxy/forwarded.py); empty, the default, trusts nobody.
    `metrics_token`: when set, `/metrics` answers only `Authorization: Bearer <token>`.
    `workers`: processes serving the port (proxy/supervisor.py); 1 is one plain process.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    allow_unauthenticated: bool = False
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout: float = 30.0
    shutdown_grace: float = 10.0
    client_write_timeout: float = 120.0
    access_log: bool = True
    trace_plugins: bool = False
    instance_id: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    metrics_token: str = field(default="", repr=False)
    loop_lag_warning: float = 0.25


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The operator's credential for the admin API and console (`admin.token`, usually
    `${WEIR_ADMIN_TOKEN}`). Empty, the default: the admin API and console answer 404.

    `token_file` (relative to proxy.yaml): used when `token` is empty; on first start a
    fresh token is written there (mode 0600) and printed once (`proxy.web.admin_token`)."""

    token: str = field(default="", repr=False)
    token_file: str = ""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where accounts live: `sqlite` (embedded, the default) or `redis`.

    With `cluster: true`, `url` names one node of a Redis Cluster (database 0) and the
    store uses redis-py's RedisCluster client, which discovers the other nodes.
    """

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = "./weir.db"
    synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "NORMAL"
    busy_timeout_ms: int = 5000
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "weir"
    cluster: bool = False
    orphan_after: float = 30.0
    heartbeat_every: float = 5.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The circuit breaker (proxy/breaker.py): after `failures` consecutive failed attempts
    an upstream is skipped for `cooldown_s` seconds, then probed once. 0 failures: off."""

    failures: int = 5
    cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream API. `type` decides the dialects it serves and its auth header style.

    `base_url` includes the API version prefix (`https://api.openai.com/v1`,
    `https://api.anthropic.com/v1`, `https://generativelanguage.googleapis.com/v1beta`).
    A `mock` upstream is the built-in mock server, started on a loopback port.
    """

    name: str
    type: Literal["openai", "anthropic", "gemini", "mock"] = "openai"
    base_url: str = ""
    api_key: tuple[str, ...] | str = field(default=(), repr=False)
    models: tuple[str, ...] = ("*",)
    model_map: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    weight: int = 1
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    headers: dict[str, str] = field(default_factory=dict)
    breaker: BreakerConfig | None = None  # None: `routing.breaker`

    @property
    def keys(self) -> tuple[str, ...]:
        """The upstream credentials, as a tuple (one or several, rotated)."""
        if isinstance(self.api_key, str):
            return (self.api_key,) if self.api_key else ()
        return self.api_key


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Failover: how many upstream attempts one request may make before anything is relayed,
    and the circuit breaker every upstream without its own `breaker:` uses."""

    max_attempts: int = 3
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One `plugins:` entry: `use` is an entry-point name or a `module:attr` path.

    `timeout` limits each hook call (seconds; an overrun is the plugin's failure) and
    `lifespan_timeout` each half of its `lifespan`; unset, the plugin's own defaults hold.
    """

    use: str
    config: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    lifespan_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole of proxy.yaml."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    plugins: tuple[PluginSpec, ...] = ()
    task_apis: tuple[TaskApiConfig, ...] = ()
    source: str = ""


def interpolate(value: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string inside `value`."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    return value


def parse_config(data: Any, env: dict[str, str] | None = None, source: str = "") -> Config:
    """Validate already-parsed YAML into a `Config`."""
    data = interpolate(data or {}, dict(os.environ) if env is None else env)
    if isinstance(data, dict):
        data = {**data, "source": source}
    cfg = build(Config, data)
    _check(cfg)
    return cfg


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read and validate a proxy.yaml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{p} is not valid YAML: {exc}") from exc
    return parse_config(data, env, source=str(p.resolve()))


def port_problem(port: int) -> str | None:
    """Why `port` cannot be `server.port` (or `--port`), or None."""
    return None if 1 <= port <= 65535 else f"must be between 1 and 65535, got {port}"


#: The most worker processes `server.workers` / `--workers` may ask for: a typo such as 800
#: must not fork hundreds of processes on one store.
MAX_WORKERS = 64


def workers_problem(workers: int) -> str | None:
    """Why `workers` cannot be `server.workers` (or `--workers`), or None."""
    return None if 1 <= workers <= MAX_WORKERS else f"must be between 1 and {MAX_WORKERS}, got {workers}"


def host_problem(host: str) -> str | None:
    """Why `host` cannot be `server.host` (or `--host`), or None: an address or host name,
    not empty, not a URL."""
    if not host:
        return "must not be empty (127.0.0.1 listens on loopback only, 0.0.0.0 on every IPv4 address)"
    if "/" in host or any(c.isspace() for c in host):
        return f"expected an address or a host name such as 127.0.0.1, got {host!r}"
    return None


def with_listener(
    config: Config, host: str | None = None, port: int | None = None, workers: int | None = None
) -> Config:
    """`config` with `server.host` / `server.port` / `server.workers` replaced (the `--host`
    / `--port` / `--workers` flags), checked by the same rules as proxy.yaml's."""
    server = replace(
        config.server,
        host=config.server.host if host is None else host,
        port=config.server.port if port is None else port,
        workers=config.server.workers if workers is None else workers,
    )
    _check_server(server)
    return replace(config, server=server)


def _check_server(server: ServerConfig) -> None:
    for key, problem in (("host", host_problem(server.host)), ("port", port_problem(server.port))):
        if problem is not None:
            raise ConfigError(f"server.{key}", problem)
    problem = workers_problem(server.workers)
    if problem is not None:
        raise ConfigError("server.workers", problem)
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes", "must be at least 1024")
    if not server.client_write_timeout > 0:
        raise ConfigError("server.client_write_timeout", "must be greater than 0")
    if server.loop_lag_warning < 0:
        raise ConfigError("server.loop_lag_warning", "must be 0 (off) or more seconds")
    parse_networks(server.trusted_proxies, "server.trusted_proxies")
    if server.metrics_token and len(server.metrics_token) < 16:
        raise ConfigError("server.metrics_token", "must be at least 16 characters (e.g. `openssl rand -hex 24`)")


def _check(cfg: Config) -> None:
    _check_server(cfg.server)
    names: set[str] = set()
    for i, up in enumerate(cfg.upstreams):
        where = f"upstreams[{i}]"
        if up.name in names:
            raise ConfigError(f"{where}.name", f"duplicate upstream name {up.name!r}")
        names.add(up.name)
        if up.type != "mock" and not up.base_url:
            raise ConfigError(f"{where}.base_url", "required for a non-mock upstream")
        if up.weight < 1:
            raise ConfigError(f"{where}.weight", "must be at least 1")
        if up.breaker is not None:
            _check_breaker(up.breaker, f"{where}.breaker")
    if cfg.admin.token and len(cfg.admin.token) < 16:
        raise ConfigError("admin.token", "must be at least 16 characters (e.g. `openssl rand -hex 24`)")
    if cfg.routing.max_attempts < 1:
        raise ConfigError("routing.max_attempts", "must be at least 1")
    check_task_apis(cfg.task_apis)
    for i, spec in enumerate(cfg.plugins):
        for key in ("timeout", "lifespan_timeout"):
            value = getattr(spec, key)
            if value is not None and not value > 0:
                raise ConfigError(f"plugins[{i}].{key}", f"must be greater than 0 seconds, got {value}")
    _check_breaker(cfg.routing.breaker, "routing.breaker")


def _check_breaker(breaker: BreakerConfig, where: str) -> None:
    if breaker.failures < 0:
        raise ConfigError(f"{where}.failures", "must be 0 (off) or more")
    if not breaker.cooldown_s > 0:
        raise ConfigError(f"{where}.cooldown_s", "must be greater than 0")
