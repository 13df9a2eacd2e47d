"""`weir serve` and `weir check-config` as real processes (`python -m proxy …`): `--host` /
`--port` / `--workers` override proxy.yaml; a bind error is one line on stderr and exit 2,
with nothing claiming to serve (with workers too, and a second Weir on a port that workers
serve is refused, not joined); a worker that cannot start fails the start; check-config
refuses what serve refuses; `pricing import-ratios` runs without any proxy.yaml. Every wait
is bounded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_server import free_port, kill_group
from tests.reliability.procs import ROOT, child_env

ADDRESS_IN_USE = "address already in use (is another weir running? use --port or server.port)"


def write_config(directory: Path, **server: Any) -> Path:
    """A proxy.yaml in `directory`: SQLite beside it, the built-in mock upstream, no plugins."""
    data = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_grace": 1.0, **server},
        "store": {"backend": "sqlite", "path": "./weir.db"},
        "upstreams": [{"name": "mock", "type": "mock", "models": ["mock-*"]}],
    }
    path = directory / "proxy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def weir(*argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ARGV` in `cwd`, captured, with no $WEIR_CONFIG."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def healthz(port: int) -> int:
    """The status of GET /healthz on 127.0.0.1:PORT (raises when nothing answers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return int(r.status)


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_port_flag_overrides_config_and_serving_on_means_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = free_port()
    out = tmp_path / "stdout"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            env=child_env(),
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, f"weir serve exited with {proc.returncode}"
            time.sleep(0.05)
        assert out.read_text() == f"weir: serving on http://127.0.0.1:{port} (config {config})\n"
        # No retry: once it says so, it serves.
        assert healthz(port) == 200
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        kill_group(proc)


def test_port_taken_is_one_line_and_exit_2(tmp_path: Path, listener: int) -> None:
    config = write_config(tmp_path, port=listener)
    res = weir("serve", "--config", str(config), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == f"weir: cannot listen on 127.0.0.1:{listener}: {ADDRESS_IN_USE}\n"


def test_port_flag_onto_a_taken_port(tmp_path: Path, listener: int) -> None:
    config = write_config(tmp_path)
    res = weir("serve", "--config", str(config), "--port", str(listener), cwd=tmp_path)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"weir: cannot listen on 127.0.0.1:{listener}: {ADDRESS_IN_USE}\n"


def test_address_not_on_this_host(tmp_path: Path) -> None:
    host = "192.0.2.1"  # TEST-NET-1: documentation only, on no interface
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        pytest.skip(f"this host can bind {host}")
    except OSError:
        pass
    port = free_port()
    config = write_config(tmp_path, allow_unauthenticated=True)
    res = weir("serve", "--config", str(config), "--host", host, "--port", str(port), cwd=tmp_path)
    assert (res.returncode, res.stdout) == (2, "")
    # Besides the startup warning that the open bind is allowed, one line: the bind error.
    lines = [line for line in res.stderr.splitlines() if "allow_unauthenticated is set" not in line]
    assert lines == [
        f"weir: cannot listen on {host}:{port}: "
        "address not available (no interface of this host has it; use --host or server.host)"
    ]


@pytest.mark.parametrize("how", ["config", "flag"])
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, how: str) -> None:
    config = write_config(tmp_path, **({"host": "0.0.0.0"} if how == "config" else {}))
    flags = ["--host", "0.0.0.0"] if how == "flag" else []
    checked = weir("check-config", "--config", str(config), *flags, cwd=tmp_path)
    served = weir("serve", "--config", str(config), *flags, cwd=tmp_path)
    assert (checked.returncode, served.returncode) == (2, 2)
    assert checked.stdout == served.stdout == ""
    assert checked.stderr == served.stderr
    assert checked.stderr.startswith("weir: config error: server.host: refusing to listen on 0.0.0.0 without")


def test_check_config_accepts_an_open_bind_with_its_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, host="0.0.0.0", allow_unauthenticated=True)
    res = weir("check-config", "--config", str(config), "--json", "--port", "9", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["listen"] == "0.0.0.0:9"
    assert data["warnings"] == [
        "server.allow_unauthenticated is set: anyone who reaches 0.0.0.0 can use your upstream keys"
    ]


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "0"], "argument --port: must be between 1 and 65535, got 0"),
        (["--port", "70000"], "argument --port: must be between 1 and 65535, got 70000"),
        (["--port", "http"], "argument --port: expected a port number, got 'http'"),
        (["--host", "http://0.0.0.0"], "argument --host: expected an address or a host name"),
        (["--workers", "0"], "argument --workers: must be between 1 and 64, got 0"),
        (["--workers", "65"], "argument --workers: must be between 1 and 64, got 65"),
        (["--workers", "two"], "argument --workers: expected a number of processes, got 'two'"),
    ],
)
def test_bad_flags_are_refused(tmp_path: Path, command: str, flags: list[str], message: str) -> None:
    config = write_config(tmp_path)
    res = weir(command, "--config", str(config), *flags, cwd=tmp_path)
    assert (res.returncode, res.stdout) == (2, "")
    assert message in res.stderr


def test_port_out_of_range_in_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=70000)
    for command in ("check-config", "serve"):
        res = weir(command, "--config", str(config), cwd=tmp_path)
        assert res.returncode == 2
        assert res.stderr == "weir: config error: server.port: must be between 1 and 65535, got 70000\n"


def test_import_ratios_needs_no_config(tmp_path: Path) -> None:
    export = tmp_path / "ratios.json"
    export.write_text(json.dumps({"model_ratio": {"gpt-4o": 1.25}, "completion_ratio": {"gpt-4o": 4}}))
    res = weir("pricing", "import-ratios", "ratios.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    block = yaml.safe_load(res.stdout)
    assert block["quota_per_usd"] == 500_000  # the billing default
    assert block["pricing"]["models"]["gpt-4o"] == {"input": 2.5, "output": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratios.json"]
    # A config that is named but missing is still an error.
    res = weir("pricing", "import-ratios", "ratios.json", "--config", "missing.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "cannot read missing.yaml" in res.stderr


def test_workers_on_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, listener: int) -> None:
    config = write_config(tmp_path, port=listener)
    res = weir("serve", "--config", str(config), "--workers", "2", cwd=tmp_path)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"weir: cannot listen on 127.0.0.1:{listener}: {ADDRESS_IN_USE}\n"


def _wait_for_line(out: Path, proc: subprocess.Popen[bytes], text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in out.read_text():
        assert proc.poll() is None, f"weir serve exited with {proc.returncode}: {out.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f}s: {out.read_text()}"
        time.sleep(0.05)


def test_workers_from_the_config_serve_and_a_second_weir_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, workers=2)
    port = yaml.safe_load(config.read_text())["server"]["port"]
    out = tmp_path / "stdout"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            cwd=ROOT,
            env=child_env(),
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for_line(out, proc, "serving on")
        assert out.read_text() == f"weir: serving on http://127.0.0.1:{port} with 2 workers (config {config})\n"
        assert healthz(port) == 200
        # SO_REUSEPORT would let a second process of the same user join the port: refused instead.
        for flags in ([], ["--workers", "3"]):
            res = weir("serve", "--config", str(config), *flags, cwd=tmp_path)
            assert (res.returncode, res.stdout) == (2, "")
            assert res.stderr == f"weir: cannot listen on 127.0.0.1:{port}: {ADDRESS_IN_USE}\n"
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        kill_group(proc)


def test_a_worker_that_cannot_start_fails_the_start(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["store"]["path"] = str(tmp_path / "missing" / "weir.db")  # a folder that does not exist
    data["plugins"] = [{"use": "billing"}]
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    res = weir("serve", "--config", str(config), "--workers", "2", cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert "serving on" not in res.stdout
    # The worker's one line names the plugin; it exits 3, as a single process would.
    assert "weir: startup failed: plugin billing: lifespan failed at startup" in res.stderr
    assert "cannot open SQLite database" in res.stderr
    assert "weir: worker 1 exited with code 3 before it was serving (its error is above)" in res.stderr
    assert "worker 2 started" not in res.stderr


def test_check_config_takes_workers(tmp_path: Path) -> None:
    config = write_config(tmp_path, workers=2)
    res = weir("check-config", "--config", str(config), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["workers"] == 2
    res = weir("check-config", "--config", str(config), "--json", "--workers", "3", cwd=tmp_path)
    assert json.loads(res.stdout)["workers"] == 3
    config = write_config(tmp_path, workers=0)
    res = weir("check-config", "--config", str(config), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == "weir: config error: server.workers: must be between 1 and 64, got 0\n"
