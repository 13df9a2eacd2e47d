"""A test-only plugin that kills its own process (or pauses it) at an exact hook call.

Listed in a `weir serve` subprocess's proxy.yaml:

    plugins:
      - use: billing
      - use: "tests.reliability.killer:Killer"
        config: {hook: on_request, at: 0}

Plugin order decides the moment: `on_request` runs in list order, every other hook in
reverse order. So a killer listed after billing dies in `on_request` after the hold, and in
`on_complete` before billing captures; listed before billing, its `on_complete` runs after
billing's capture, and its `on_event` after billing has metered the event.

`at` counts the calls of `hook` in this process from 0 (for `on_event`: events). Before it
acts the killer writes `marker` (if set) with the hook and index, fsync'd, so a test can
tell that the process died where it was told to and not elsewhere. `action: pause` waits
instead until the file `go` exists (at most `pause_timeout` seconds), then carries on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from proxy.plugin import Outcome, Plugin, ProxyError, RequestContext, SSEEvent

HOOKS = frozenset({"on_request", "on_event", "on_body", "on_complete", "on_error"})


@dataclass(frozen=True, slots=True)
class KillerConfig:
    """Where to act: the `at`-th call (from 0) of `hook`; `kill` or `pause` until `go` exists."""

    hook: str = "on_request"
    at: int = 0
    action: str = "kill"
    marker: str | None = None
    go: str | None = None
    pause_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.hook not in HOOKS:
            raise ValueError(f"hook: expected one of {', '.join(sorted(HOOKS))}, got {self.hook!r}")
        if self.action not in ("kill", "pause"):
            raise ValueError(f"action: expected kill or pause, got {self.action!r}")
        if self.action == "pause" and self.go is None:
            raise ValueError("go: a pause needs the path of the file that ends it")


class Killer(Plugin):
    """SIGKILLs (or pauses) the process at the configured hook call. Never use in production."""

    name: ClassVar[str] = "killer"
    Config: ClassVar[type[Any]] = KillerConfig

    def __init__(self, config: KillerConfig | None = None) -> None:
        super().__init__(config)
        self.config: KillerConfig = self.config
        self._calls: dict[str, int] = {}

    async def _tick(self, hook: str, ctx: RequestContext) -> None:
        """Count one call of `hook`; act when it is the configured one."""
        index = self._calls.get(hook, 0)
        self._calls[hook] = index + 1
        cfg = self.config
        if hook != cfg.hook or index != cfg.at:
            return
        if cfg.marker is not None:
            _write_synced(Path(cfg.marker), f"{hook} {index} {ctx.request_id}\n")
        if cfg.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(60)  # SIGKILL cannot be caught; never reached
        await self._pause(Path(cfg.go or ""))

    async def _pause(self, go: Path) -> None:
        deadline = time.monotonic() + self.config.pause_timeout
        while not go.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def on_request(self, ctx: RequestContext) -> None:
        """Counts requests."""
        await self._tick("on_request", ctx)

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | None:
        """Counts events; passes each on unchanged."""
        await self._tick("on_event", ctx)
        return event

    async def on_body(self, ctx: RequestContext, body: bytes) -> bytes:
        """Counts non-streamed bodies; passes each on unchanged."""
        await self._tick("on_body", ctx)
        return body

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Counts completed responses."""
        await self._tick("on_complete", ctx)

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        """Counts failed requests."""
        await self._tick("on_error", ctx)


def _write_synced(path: Path, text: str) -> None:
    # Written aside and renamed: a test polls for the file to exist and then reads it, and
    # must never see it created but still empty.
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
