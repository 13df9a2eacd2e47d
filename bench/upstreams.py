"""Subprocess plumbing for the benchmark: the two mock upstreams, free ports, readiness, cleanup.

Every process the benchmark starts is registered on a `contextlib.ExitStack`, so it is stopped
(SIGTERM, then SIGKILL after a grace period) however the run ends: normally, on an exception
or on Ctrl-C. Each mock runs in its own OS process so its CPU is never charged to the proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Upstreams",
    "free_port",
    "spawn",
    "start_upstreams",
    "stop_process",
    "wait_http",
]

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The two mock upstream processes: `instant` (pace 0) and `paced` (events 20 ms apart).

    URLs are bare base URLs (`http://127.0.0.1:PORT`, no `/v1`); the mock serves `/v1/...`.
    """

    instant_url: str
    paced_url: str
    instant_pid: int
    paced_pid: int
    paced_events: int
    pace: float


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop one process we started: SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


def spawn(
    argv: list[str], stack: ExitStack, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout/stderr going to `log`; the stack stops it on exit."""
    out = log.open("wb")
    stack.callback(out.close)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env if env is not None else child_env(),
    )
    # Registered after the log file, so the process stops before its log is closed.
    stack.callback(stop_process, proc)
    return proc


def child_env() -> dict[str, str]:
    """The environment for children: this one, with the repository on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Poll `url` until it answers any HTTP status; fail fast if `proc` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before answering:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # any status means the listener is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s (log: {log})")


def _spawn_mock(
    stack: ExitStack, workdir: Path, name: str, pace: float, words: int
) -> tuple[str, subprocess.Popen[bytes], Path]:
    port = free_port()
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "proxy.mock.upstream", "--host", HOST, "--port", str(port)]
    argv += ["--pace", str(pace), "--words", str(words)]
    return f"http://{HOST}:{port}", spawn(argv, stack, log), log


def start_upstreams(
    stack: ExitStack, workdir: Path, instant_words: int = 1000, paced_events: int = 64, pace: float = 0.02
) -> Upstreams:
    """Start the instant and the paced mock, each in its own process; wait until both answer.

    The instant mock answers `instant_words` content events unless a request's `max_tokens`
    asks for fewer; the benchmark uses that to get short answers for latency runs and long
    streams for the CPU-per-event run from the same process.
    """
    # Both start before either is awaited: interpreter start-up is most of the wait.
    instant = _spawn_mock(stack, workdir, "mock-instant", 0.0, instant_words)
    paced = _spawn_mock(stack, workdir, "mock-paced", pace, paced_events)
    for url, proc, log in (instant, paced):
        wait_http(url + "/v1/models", proc, log)
    return Upstreams(instant[0], paced[0], instant[1].pid, paced[1].pid, paced_events, pace)
