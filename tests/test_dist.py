"""The single-file build, tested as an operator uses it: `make dist` runs once per test
session, then dist/weir is copied to an empty folder and run there by the system's plain
python3 with a minimal environment (PATH=/usr/bin:/bin, no virtualenv, no PYTHONPATH, its own
HOME and SHIV_ROOT). It serves the bundled proxy.yaml (port and folder moved), bills a
request with the first-run demo key, stops on SIGTERM with exit 0, and `./weir audit` exits
0; then the same with `--workers 2`. Skips, saying why, only when shiv cannot be installed or
the system python3 is missing or of another version than the build's.
"""

from __future__ import annotations

import json
import re
import runpy
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.redis_server import free_port, kill_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
_KEY = re.compile(r"Its API key \(shown once, store it now\): (\S+)")


@pytest.fixture(scope="session")
def artifact() -> Path:
    """dist/weir, built once per session by `make dist`."""
    res = subprocess.run(["make", "dist"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        has_shiv = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", "import shiv"], capture_output=True)
        if has_shiv.returncode != 0:
            pytest.skip(f"shiv cannot be installed, so `make dist` cannot build: {res.stderr.strip()[-500:]}")
        raise AssertionError(f"make dist failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    path = ROOT / "dist" / "weir"
    assert path.is_file() and path.stat().st_mode & 0o111, "make dist wrote no executable dist/weir"
    return path


@pytest.fixture
def server_dir(artifact: Path, tmp_path: Path) -> Iterator[Path]:
    """An empty folder with only ./weir and the bundled proxy.yaml (its own port), checked
    to have no Weir importable outside the artifact."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"no system Python at {SYSTEM_PYTHON} to run the artifact with")
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"the system python3 is {version}, the build is for {sys.version_info[:2]}")
    home = tmp_path / "srv"
    home.mkdir()
    shutil.copy2(artifact, home / "weir")
    config = yaml.safe_load((ROOT / "proxy.yaml").read_text())
    config["server"]["port"] = free_port()
    (home / "proxy.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    bare = subprocess.run([str(SYSTEM_PYTHON), "-c", "import proxy"], cwd=home, env=_env(home), capture_output=True)
    assert bare.returncode != 0, "Weir is importable without the artifact: the test would prove nothing"
    yield home


def _env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "SHIV_ROOT": str(home / "shiv"), "LANG": "C.UTF-8"}


def _weir(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./weir", *argv], cwd=home, env=_env(home), capture_output=True, text=True, timeout=120)


def _serve(home: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = home / f"serve-{time.monotonic_ns()}.log"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            ["./weir", "serve", "--config", "proxy.yaml", *flags],
            cwd=home,
            env=_env(home),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while "weir: serving on" not in out.read_text():
        assert proc.poll() is None, f"./weir serve exited with {proc.returncode}:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"./weir serve did not start:\n{out.read_text()}"
        time.sleep(0.1)
    return proc, out


def _chat(port: int, key: str) -> dict[str, object]:
    body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "hello from dist"}]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200
        answer: dict[str, object] = json.loads(r.read())
    return answer


def _used(home: Path) -> tuple[int, int]:
    res = _weir(home, "user", "show", "demo", "--config", "proxy.yaml", "--json")
    assert res.returncode == 0, res.stderr
    user = json.loads(res.stdout)
    return int(user["used_quota"]), int(user["request_count"])


def _stop(proc: subprocess.Popen[bytes], out: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, out.read_text()


def test_the_artifact_serves_bills_and_audits(server_dir: Path) -> None:
    home = server_dir
    port = yaml.safe_load((home / "proxy.yaml").read_text())["server"]["port"]
    proc, out = _serve(home)
    try:
        found = _KEY.search(out.read_text())
        assert found, f"no first-run key in:\n{out.read_text()}"
        key = found.group(1)
        answer = _chat(port, key)
        usage = answer["usage"]
        assert isinstance(usage, dict) and usage["completion_tokens"] > 0
        # The capture follows the response: wait for it (bounded), then check the money moved.
        deadline = time.monotonic() + 30
        while _used(home)[1] != 1:
            assert time.monotonic() < deadline, "the request was never charged"
            time.sleep(0.2)
        used, _ = _used(home)
        assert used > 0
        _stop(proc, out)
    finally:
        kill_group(proc)
    res = _weir(home, "audit", "--config", "proxy.yaml")
    assert res.returncode == 0, res.stdout + res.stderr

    # The same file with two workers (forked inside the zipapp), on the same store.
    proc, out = _serve(home, "--workers", "2")
    try:
        assert "with 2 workers" in out.read_text()
        _chat(port, key)
        deadline = time.monotonic() + 30
        while _used(home)[1] != 2:
            assert time.monotonic() < deadline, "the second request was never charged"
            time.sleep(0.2)
        _stop(proc, out)
    finally:
        kill_group(proc)
    res = _weir(home, "audit", "--config", "proxy.yaml", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stdout + res.stderr


def test_the_preamble_refuses_another_python_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What dist/weir prints on a Python whose compiled modules the build does not carry.
    site = tmp_path / "site-packages"
    (site / "orjson").mkdir(parents=True)
    (site / "orjson" / "orjson.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "dist" / "preamble.py"), init_globals={"site_packages": site})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "weir: this build's compiled modules are for '.cpython-39-x86_64-linux-gnu.so', but this Python"
    )
    assert err.count("\n") == 1
    # The Python it was built for passes.
    built = site / "orjson" / "orjson.cpython-39-x86_64-linux-gnu.so"
    built.rename(site / "orjson" / f"orjson{sysconfig.get_config_var('EXT_SUFFIX')}")
    runpy.run_path(str(ROOT / "dist" / "preamble.py"), init_globals={"site_packages": site})


def test_the_systemd_unit_runs_valid_commands_and_outlasts_the_drain() -> None:
    unit: dict[str, list[str]] = {}
    for line in (ROOT / "dist" / "weir.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            unit.setdefault(name, []).append(value)
    for required in ("User", "WorkingDirectory", "ExecStart", "KillSignal", "TimeoutStopSec", "NoNewPrivileges"):
        assert required in unit, required
    assert (unit["Restart"], unit["KillSignal"], unit["KillMode"]) == (["on-failure"], ["SIGTERM"], ["mixed"])
    # Each command is one `weir` accepts (parsed by the real parser, not run).
    from proxy.cli import build_parser

    parser, commands = build_parser()
    for command in (*unit["ExecStartPre"], *unit["ExecStart"]):
        program, *argv = command.split()
        assert program == "/opt/weir/weir"
        assert parser.parse_args(argv).command in commands
    # systemd must not kill a draining worker before the supervisor would (grace + 20 s).
    from proxy.config import ServerConfig

    assert int(unit["TimeoutStopSec"][0]) > ServerConfig().shutdown_grace + 20
