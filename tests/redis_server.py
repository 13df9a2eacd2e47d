"""Private `redis-server` processes for the tests: the suite never touches a Redis it did not start.

`suite_redis` is what the session fixture `redis_url` (tests/conftest.py) runs: one
`redis-server` on a free loopback port, in a temporary directory, persistence off, stopped by
its PID at the end of the session. Tests share it and keep apart by key prefix; some run
SCRIPT FLUSH or MONITOR on it, which is why it must be private. `WEIR_TEST_REDIS_URL` names a
running Redis to use instead (nothing is started then; it must be one the suite may write
to, flush scripts on and monitor). Without `redis-server` and without that variable the Redis
tests skip, or fail under `WEIR_REQUIRE_REDIS=1`.

`RedisServer` is also used directly by tests that stop and restart a server of their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

from plugins.billing.store.redis.client import redact

EXTERNAL_ENV = "WEIR_TEST_REDIS_URL"
REQUIRE_ENV = "WEIR_REQUIRE_REDIS"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
    """Send `sig` to the process group of `proc` (its own session) and reap it; SIGKILL it
    if it has not exited within `wait` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait)


def redis_missing(reason: str) -> NoReturn:
    """Skip the current test for `reason`; fail it instead under WEIR_REQUIRE_REDIS=1."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)


def redis_server_binary() -> str:
    """The path of `redis-server`; a skip (a failure under WEIR_REQUIRE_REDIS=1) without it."""
    binary = shutil.which("redis-server")
    if binary is None:
        redis_missing(f"redis-server is not installed (or set {EXTERNAL_ENV} to a Redis the tests may use)")
    return binary


class RedisServer:
    """A `redis-server` of our own on a free loopback port, its files in `directory`.

    Persistence is off unless `appendonly`, which keeps the data across `stop()` and a
    restart on the same port (the restart tests need it)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://127.0.0.1:{self.port}/0"

    def start_blocking(self, timeout: float = 10.0, extra: tuple[str, ...] = (), wait: bool = True) -> RedisServer:
        """Start (or restart, on the same port and files) and, with `wait`, wait until it
        answers PING. `extra` adds command-line settings (`--name value` pairs)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.directory),
            *extra,
        ]
        with open(self.directory / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait:
            return self
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError(f"redis-server on port {self.port} did not answer within {timeout:g} s")
            time.sleep(0.05)
        return self

    async def start(self, timeout: float = 10.0, extra: tuple[str, ...] = (), wait: bool = True) -> RedisServer:
        """`start_blocking` without blocking the event loop."""
        return await asyncio.to_thread(self.start_blocking, timeout, extra, wait)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server on port {self.port} exited with {self.proc.returncode}:\n{log}")
        try:
            with redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    async def command(self, *argv: str) -> Any:
        """One command on a fresh connection (decoded replies)."""
        import redis.asyncio as aioredis

        client: Any = aioredis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_connect_timeout=1, socket_timeout=2
        )
        try:
            return await client.execute_command(*argv)
        except Exception as exc:
            raise OSError(str(exc)) from exc
        finally:
            await client.aclose()

    def stop(self) -> None:
        """SIGTERM to its PID (Redis writes its append-only file and exits), then wait; SIGKILL
        if it is still there after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (cleanup)."""
        if self.proc is not None:
            kill_group(self.proc)


def _unreachable(url: str) -> str | None:
    """Why the Redis at `url` cannot be used, or None when it answers PING."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        return f"the Redis named by {EXTERNAL_ENV} ({redact(url)}) does not answer: {exc!r}"
    return None


@contextmanager
def suite_redis(directory: Callable[[], Path]) -> Iterator[str]:
    """The URL (database 0) of the Redis the tests use while the context lasts: the one named
    by WEIR_TEST_REDIS_URL, or a private `redis-server` in `directory()`, stopped afterwards.
    Skips (fails under WEIR_REQUIRE_REDIS=1) when neither is available."""
    external = os.environ.get(EXTERNAL_ENV, "").strip()
    if external:
        reason = _unreachable(external)
        if reason is not None:
            redis_missing(reason)
        yield external
        return
    redis_server_binary()
    server = RedisServer(directory()).start_blocking()
    try:
        yield server.url
    finally:
        server.stop()
