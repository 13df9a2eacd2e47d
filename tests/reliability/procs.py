"""Real processes for the reliability tests: `weir serve` and the CLI (a private
`redis-server` is `tests.redis_server.RedisServer`).

Every process starts in its own session (its own process group), so a test can SIGKILL the
whole group and nothing outlives it. Every wait here is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.redis_server import free_port, kill_group

ROOT = Path(__file__).resolve().parents[2]

#: Prices of the mock models in these tests, USD per 1M tokens. Large on purpose: one
#: output token of mock-gpt is 50 quota units, so a charge off by one token is visible.
PRICES: dict[str, dict[str, Any]] = {"mock-gpt*": {"input": 10, "output": 100}}
QUOTA_PER_USD = 500_000
#: What the test user is funded with.
FUNDS = 1_000_000
#: Quota units per mock-gpt input / output token at PRICES: exact, no rounding.
IN_UNIT, OUT_UNIT = 5, 50


def child_env() -> dict[str, str]:
    """The environment of a child: the repo root importable (for `tests.reliability.killer`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WEIR_CONFIG", "PROXY_TRACE_PLUGINS")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


async def wait_for(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll `check` (plain or async) until it is true; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if done if isinstance(done, bool) else await done:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(every)


@dataclass(frozen=True, slots=True)
class WeirConfig:
    """What goes into one instance's proxy.yaml."""

    upstream_url: str
    store: dict[str, Any]
    plugins: tuple[dict[str, Any], ...]
    port: int = field(default_factory=free_port)
    server: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        """Write `directory/proxy.yaml` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "shutdown_grace": 1.0,
                "access_log": False,
                **self.server,
            },
            "store": self.store,
            "upstreams": [{"name": "fake", "type": "mock", "base_url": self.upstream_url, "models": ["mock-*"]}],
            "plugins": list(self.plugins),
        }
        path = directory / "proxy.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


def billing_plugin(**config: Any) -> dict[str, Any]:
    """The `plugins:` entry of the billing plugin with the test prices."""
    return {"use": "billing", "config": {"quota_per_usd": QUOTA_PER_USD, "pricing": {"models": PRICES}, **config}}


def killer_plugin(
    hook: str, at: int = 0, action: str = "kill", marker: Path | None = None, go: Path | None = None
) -> dict[str, Any]:
    """The `plugins:` entry of the test-only `tests.reliability.killer:Killer`."""
    config: dict[str, Any] = {"hook": hook, "at": at, "action": action}
    if marker is not None:
        config["marker"] = str(marker)
    if go is not None:
        config["go"] = str(go)
    return {"use": "tests.reliability.killer:Killer", "config": config}


class WeirProcess:
    """A `weir serve --config PATH [ARGS]` subprocess (cwd = the repo root)."""

    def __init__(self, config: Path, port: int, args: tuple[str, ...] = ("--quiet",)) -> None:
        self.config = config
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / f"weir-{port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> WeirProcess:
        """Start the process and wait until /healthz answers 200."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", *self.args, "--config", str(self.config)],
                cwd=ROOT,
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await wait_for(self._healthy, timeout, f"weir at {self.url} to be healthy", every=0.1)
        except AssertionError:
            self.kill()
            raise AssertionError(f"weir did not start; its log:\n{self.output()}") from None
        return self

    async def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"weir exited with {self.proc.returncode}; its log:\n{self.output()}")
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r,
            ):
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    def output(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def wait_dead(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit by itself; its return code."""
        await wait_for(lambda: not self.alive, timeout, "weir to die")
        assert self.proc is not None
        return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the process group (idempotent)."""
        if self.proc is not None:
            kill_group(self.proc)


def audit_json(config: Path) -> tuple[int, dict[str, Any]]:
    """`weir audit --json --config CONFIG` in a subprocess: (exit code, the report)."""
    res = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "--json", "--config", str(config)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        report: dict[str, Any] = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"weir audit printed no JSON (exit {res.returncode}): {res.stderr}") from None
    return res.returncode, report


@dataclass(slots=True)
class Answer:
    """What a client saw of one chat request (stream or not)."""

    status: int = 0
    request_id: str = ""
    events: list[Any] = field(default_factory=list)
    text: str = ""
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    broken: bool = False
    done: bool = False


def chat_body(prompt: str = "hello weir", stream: bool = True) -> dict[str, Any]:
    """A mock-gpt chat request; streams ask for usage so the client can read it."""
    body: dict[str, Any] = {"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def chat(url: str, key: str, body: dict[str, Any], timeout: float = 120.0) -> Answer:
    """POST /v1/chat/completions and read it all; a connection that breaks sets `broken`.
    `timeout` only bounds a hung test: tests gate streams for as long as their phase takes,
    which on a loaded 2-vCPU machine has passed 30 s."""
    from proxy.sse import SSEParser

    ans = Answer()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url + "/v1/chat/completions", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r,
        ):
            ans.status, ans.request_id = r.status, r.headers.get("x-request-id", "")
            if r.status != 200 or not body.get("stream"):
                data = await r.json(content_type=None)
                ans.error = data.get("error") if r.status != 200 else None
                if r.status == 200:
                    ans.text, ans.usage, ans.done = data["choices"][0]["message"]["content"], data.get("usage"), True
                return ans
            parser = SSEParser()
            async for chunk in r.content.iter_any():
                for item in parser.feed(chunk):
                    _take(ans, item)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        ans.broken = True
    return ans


def _take(ans: Answer, item: Any) -> None:
    data = getattr(item, "data", None)
    if data is None:
        return
    if data == "[DONE]":
        ans.done = True
        return
    payload = json.loads(data)
    ans.events.append(payload)
    for choice in payload.get("choices") or ():
        ans.text += (choice.get("delta") or {}).get("content") or ""
    if payload.get("usage"):
        ans.usage = payload["usage"]


@dataclass(slots=True)
class World:
    """One test's world: a mock upstream, a store every instance shares, a funded key.

    Instances live in `tmp/<name>/proxy.yaml`; starting a name again restarts it on the same
    config (same port, same outbox directory). The test keeps its own store connection.
    """

    tmp: Path
    mock: Any
    store_cfg: dict[str, Any]
    procs: list[WeirProcess] = field(default_factory=list)
    store: Any = None
    key: str = ""

    def marker(self) -> Path:
        """Where the killer writes the hook it acted in."""
        return self.tmp / "killed-at"

    def go(self) -> Path:
        """The file that ends a killer's pause."""
        return self.tmp / "go"

    def config(self, name: str) -> Path:
        """The proxy.yaml of instance `name`."""
        return self.tmp / name / "proxy.yaml"

    def outbox(self, name: str) -> list[Path]:
        """The outbox files of instance `name` (next to its proxy.yaml)."""
        return sorted((self.tmp / name / "weir-outbox").glob("*.jsonl"))

    async def start(
        self, name: str, plugins: tuple[dict[str, Any], ...] = (), server: dict[str, Any] | None = None
    ) -> WeirProcess:
        """Write `tmp/name/proxy.yaml` (or reuse it: a restart) and start `weir serve` on it;
        `server` adds to its `server:` block."""
        from proxy.config import load_config

        path = self.config(name)
        if path.exists():
            port = load_config(path).server.port
        else:
            cfg = WeirConfig(self.mock.url, self.store_cfg, plugins, server=server or {})
            path, port = cfg.write(self.tmp / name), cfg.port
        proc = WeirProcess(path, port)
        self.procs.append(proc)
        await proc.start()
        if self.store is None:
            await self._fund(path)
        return proc

    async def _fund(self, config: Path) -> None:
        from plugins.billing.apikeys import generate_key
        from plugins.billing.store.factory import make_store
        from proxy.config import load_config

        self.store = make_store(load_config(config))
        await self.store.open()
        await self.store.create_user("alice")
        await self.store.credit("alice", FUNDS, note="reliability test funding")
        clear, digest, hint = generate_key()
        await self.store.create_key("alice", digest, name="rel", hint=hint)
        self.key = clear

    async def died_at(self, proc: WeirProcess, hook: str, index: int) -> str:
        """Wait for `proc` to die of SIGKILL in `hook` call `index`; the request id."""
        code = await proc.wait_dead()
        assert code == -signal.SIGKILL, f"weir exited with {code}, not SIGKILL; log:\n{proc.output()}"
        return self.acted(hook, index)

    def acted(self, hook: str, index: int) -> str:
        """Check the killer's marker names `hook` call `index`; the request id."""
        words = self.marker().read_text().split()
        assert words[:2] == [hook, str(index)], words
        return words[2]

    async def no_open_holds(self, timeout: float) -> None:
        """Wait until no hold is open."""

        async def none_open() -> bool:
            return not await self.store.open_holds()

        await wait_for(none_open, timeout, "every hold to be resolved", every=0.1)

    async def row(self, request_id: str) -> Any:
        """The one consume-log row of `request_id` (a LogRow)."""
        rows = [r for r in await self.store.query_logs(user="alice", limit=1000) if r.request_id == request_id]
        assert len(rows) == 1, (request_id, rows, await self.store.get_hold(request_id))
        return rows[0]

    async def assert_wallet(self, charged: int, requests: int) -> None:
        """The wallet moved by exactly `charged` over `requests` resolutions; nothing reserved."""
        user = await self.store.get_user("alice")
        assert (user.balance, user.reserved, user.used) == (FUNDS - charged, 0, charged)
        assert len(await self.store.query_logs(user="alice", limit=1000)) == requests

    async def assert_audit(self, name: str) -> None:
        """`weir audit --json` on instance `name`'s config exits 0; the store's audit agrees."""
        code, report = audit_json(self.config(name))
        assert code == 0 and report["ok"], report
        assert (await self.store.audit(time.time(), report["orphan_after"])).ok

    async def close(self) -> None:
        """Kill every process, drop Redis keys, close the test's store connection."""
        for proc in self.procs:
            proc.kill()
        if self.store is not None:
            drop = getattr(self.store, "drop_all", None)
            try:
                if drop is not None:
                    await drop()
            finally:
                await self.store.close()
