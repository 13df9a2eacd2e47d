"""proxy.yaml loading: types, env interpolation, unknown keys with their YAML path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, PluginSpec, load_config, parse_config
from proxy.loader import load_plugins

ROOT = Path(__file__).resolve().parents[2]


def test_bundled_proxy_yaml_loads() -> None:
    cfg = load_config(ROOT / "proxy.yaml")
    assert cfg.store.backend == "sqlite"
    assert [u.type for u in cfg.upstreams] == ["mock"]
    assert cfg.server.host == "127.0.0.1"


def test_env_interpolation_and_defaults() -> None:
    data = {"upstreams": [{"name": "a", "base_url": "${BASE:-http://x/v1}", "api_key": "${KEY}"}]}
    cfg = parse_config(data, env={"KEY": "sk-1"})
    assert cfg.upstreams[0].base_url == "http://x/v1" and cfg.upstreams[0].keys == ("sk-1",)
    assert "sk-1" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.api_key: environment variable KEY is not set"):
        parse_config(data, env={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"prot": 1}}, r"server\.prot: unknown key"),
        ({"server": {"port": "eighty"}}, r"server\.port: expected an integer"),
        ({"store": {"backend": "mysql"}}, r"store\.backend: expected one of sqlite, redis"),
        ({"upstreams": [{"name": "a", "type": "mock", "wieght": 2}]}, r"upstreams\[0\]\.wieght: unknown key"),
        ({"upstreams": [{"name": "a"}]}, r"upstreams\[0\]\.base_url: required"),
        ({"upstreams": [{"type": "mock"}]}, r"upstreams\[0\]\.name: required key is missing"),
        (
            {"upstreams": [{"name": "a", "type": "mock"}, {"name": "a", "type": "mock"}]},
            r"upstreams\[1\]\.name: duplicate",
        ),
        ({"plugins": [{"config": {}}]}, r"plugins\[0\]\.use: required"),
        ({"server": {"client_write_timeout": 0}}, r"server\.client_write_timeout: must be greater than 0"),
        ({"server": {"client_write_timeout": -1.5}}, r"server\.client_write_timeout: must be greater than 0"),
        ({"server": {"metrics_token": "short"}}, r"server\.metrics_token: must be at least 16 characters"),
        ({"admin": {"token": "short"}}, r"admin\.token: must be at least 16 characters"),
    ],
)
def test_errors_name_their_path(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, env={})


def test_plugin_errors_name_their_path() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.use: no plugin named 'nope'"):
        load_plugins((PluginSpec(use="nope"),))
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.use: cannot import"):
        load_plugins((PluginSpec(use="no.such.module:Thing"),))
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.use: 'json:loads' is not a weir Plugin"):
        load_plugins((PluginSpec(use="json:loads"),))


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(ROOT / "proxy.yaml"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  hots: 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "server.hots: unknown key" in res.stderr
