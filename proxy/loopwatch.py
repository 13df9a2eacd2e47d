"""Notice a blocked event loop and name the plugin hook that blocked it.

A hook that blocks (`time.sleep`, a synchronous HTTP call, a long computation) stalls
every request the process serves. Two parts find it, at no cost per request or event:

  * a tick on the event loop (a tracked service) that measures how late it wakes: a lag
    of `server.loop_lag_warning` seconds or more is logged when the loop runs again (a
    warning once Weir serves; during startup, when it delays nobody, at DEBUG);
  * a sampler thread that notices a tick overdue while the loop is still blocked and
    looks at the loop thread's Python stack then: the innermost frame that is a plugin's
    hook names the plugin, the hook and the request (`self` and `ctx` of that frame).
    A stall that goes on for `STILL_BLOCKED` seconds is logged by the thread at once,
    since the loop may never run again to do it.

The pipeline does not record which hook runs: the stack already says so when it matters.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Sequence
from types import CodeType, FrameType

from proxy.pipeline import HOOKS, overrides
from proxy.plugin import Plugin

log = logging.getLogger(__name__)

#: After this many seconds of one stall, the sampler thread logs it without waiting for
#: the loop (which may be blocked for good).
STILL_BLOCKED = 5.0


class LoopWatch:
    """The loop-lag monitor of one app. `run()` is its service; `stalls` counts reports."""

    def __init__(self, plugins: Sequence[Plugin], threshold: float) -> None:
        self.threshold = threshold
        self.interval = min(0.1, threshold / 2)
        # Code object of every overridden hook → the hook's name: how a frame is recognised.
        self._hooks: dict[CodeType, str] = {}
        for plugin in plugins:
            for hook in HOOKS:
                if overrides(plugin, hook):
                    func = getattr(type(plugin), hook)
                    code = getattr(func, "__code__", None)
                    if isinstance(code, CodeType):
                        self._hooks[code] = hook
        self.stalls = 0
        #: When startup ended (monotonic), set by the app; stalls before it delay nobody.
        self.serving_since: float | None = None
        self._beat = time.monotonic()
        self._suspect: tuple[float, str] | None = None
        self._told = 0.0
        self._loop_thread = 0
        self._stop = threading.Event()

    async def run(self) -> None:
        """Tick until cancelled, with the sampler thread beside it; report each stall."""
        self._loop_thread = threading.get_ident()
        thread = threading.Thread(target=self._sample_forever, name="weir-loopwatch", daemon=True)
        thread.start()
        loop = asyncio.get_running_loop()
        try:
            while True:
                beat = self._beat = time.monotonic()
                start = loop.time()
                await asyncio.sleep(self.interval)
                lag = loop.time() - start - self.interval
                if lag >= self.threshold:
                    # The block began in [beat, beat + interval]: after startup if that
                    # window reaches past its end (a startup stall ends before it does).
                    since = self.serving_since
                    self._report(beat, lag, since is not None and beat + self.interval >= since)
        finally:
            self._stop.set()

    def _report(self, beat: float, lag: float, serving: bool) -> None:
        suspect = self._suspect
        culprit = suspect[1] if suspect is not None and suspect[0] == beat else "nothing the sampler saw"
        self._suspect = None
        self.stalls += 1
        level = logging.WARNING if serving else logging.DEBUG
        log.log(
            level,
            "event loop blocked for %.2f s%s; running then: %s",
            lag,
            "" if serving else " during startup",
            culprit,
        )

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            beat = self._beat
            stalled = time.monotonic() - beat - self.interval
            if stalled < self.threshold:
                continue
            if self._suspect is None or self._suspect[0] != beat:
                self._suspect = (beat, self.culprit())
            if stalled >= STILL_BLOCKED and self._told != beat:
                self._told = beat
                log.error("event loop blocked for %.0f s so far, in %s", stalled, self._suspect[1])

    def culprit(self) -> str:
        """What the loop thread is running now: the plugin hook on its stack, or else its
        innermost Python function."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        innermost = frame
        while frame is not None:
            hook = self._hooks.get(frame.f_code)
            if hook is not None:
                return _describe(frame, hook)
            frame = frame.f_back
        if innermost is None:
            return "an unknown place"
        code = innermost.f_code
        return f"no plugin hook; innermost function {code.co_qualname} ({code.co_filename}:{innermost.f_lineno})"


def _describe(frame: FrameType, hook: str) -> str:
    local = frame.f_locals
    plugin = local.get("self")
    name = plugin.name if isinstance(plugin, Plugin) else "?"
    ctx = local.get("ctx")
    request = getattr(ctx, "request_id", None)
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    text = f"plugin {name} in {hook} ({where})"
    return text if request is None else f"{text} [request {request}]"
