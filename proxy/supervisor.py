"""`weir serve --workers N`: N worker processes serve one port; this process supervises them.

One Python process runs one event loop on one core. Workers are whole processes, each an
ordinary single-process Weir (its own app, plugins, store connection and instance id), so
nothing in the request path changes; they share the port and the store, and the store's
own rules (SQLite's `BEGIN IMMEDIATE`, Redis scripts) keep the billing exact across them.

- **Sockets.** For each worker the supervisor binds fresh SO_REUSEPORT sockets and forks; the
  worker listens on them and the supervisor keeps no copy. The kernel spreads new
  connections over the listening sockets, and a dead worker's socket closes with it, so new
  connections go to the live ones while it restarts (connections it had accepted, or that
  waited in its queue, are lost with it).
- **Fork, not exec.** A forked worker starts from the config and plugins the supervisor
  already loaded and checked, and the single-file build (a zipapp) has no `python -m proxy`
  to exec.
- **Readiness.** Each worker writes one byte on a pipe once its sites listen; `serving on` is
  printed when every worker has done so. The first worker starts alone (it migrates a new
  store and makes the first-run user), the others once it is ready. A worker that dies
  before its first readiness fails the whole start (exit 1): its error is in the log.
- **Restarts.** A worker that dies while serving is restarted and logged; a worker that
  lived less than `_STABLE` seconds counts toward a streak that doubles the wait before the
  next start (`_FIRST` up to `_CAP` seconds), so a crash loop does not spin.
- **Stopping.** The first SIGTERM or SIGINT is forwarded as SIGTERM to every worker, which
  drains as a single process does (docs/operations.md, Shutdown); later ones are ignored.
  A worker still running `stop_timeout` seconds later is killed. Exit 0 when every worker
  exited 0.
- **Supervisor death.** Each worker holds the read end of a pipe whose write end only the
  supervisor holds; when the supervisor dies (even by SIGKILL), the worker reads EOF and
  drains as on SIGTERM, so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from aiohttp.web import GracefulExit

__all__ = ["Supervisor", "WorkerLink"]

log = logging.getLogger(__name__)

#: A worker that lived at least this long was healthy: its death starts no backoff streak.
_STABLE = 30.0
#: The wait before the second start in a streak of short-lived workers; doubled each time.
_FIRST = 0.5
#: The longest wait between two starts of a crash-looping worker.
_CAP = 30.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGNALS = (*_STOP_SIGNALS, signal.SIGCHLD)


@dataclass(slots=True, eq=False)
class WorkerLink:
    """What a worker process gets from its supervisor: its number (from 1), its listening
    sockets, and the two pipes (readiness out, supervisor's life in)."""

    index: int
    sockets: list[socket.socket]
    ready_fd: int
    life_fd: int
    _stopping: bool = field(default=False, init=False)

    def ready(self) -> None:
        """Tell the supervisor this worker listens (once; later calls do nothing)."""
        fd, self.ready_fd = self.ready_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # a supervisor that died meanwhile: EOF comes next
                os.write(fd, b"!")
            os.close(fd)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker's running loop: drain on the first SIGTERM/SIGINT only, and drain
        when the supervisor dies.

        aiohttp raises GracefulExit on every signal; a second one while draining (a systemd
        that signals the whole group, or Ctrl-C in a terminal beside the supervisor's
        forwarded SIGTERM) would cut the drain short and lose settlements."""
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._drain)
        loop.add_reader(self.life_fd, self._supervisor_gone, loop)

    def _drain(self) -> None:
        if self._stopping:
            log.info("worker %d: already draining; signal ignored", self.index)
            return
        self._stopping = True
        raise GracefulExit()  # what aiohttp's own handler raises: run_app then drains

    def _supervisor_gone(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            data = os.read(self.life_fd, 64)
        except OSError:
            data = b""
        if data:
            return  # nothing is ever written; only EOF matters
        loop.remove_reader(self.life_fd)
        log.error("worker %d: the supervisor is gone; draining", self.index)
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(slots=True, eq=False)
class _Slot:
    """One worker position: the process now in it, and its restart bookkeeping."""

    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False  # the process now in the slot said it listens
    ever_ready: bool = False
    streak: int = 0  # consecutive short lives
    due: float | None = None  # when to start the next process (None: not scheduled)
    ready_fd: int = -1
    life_fd: int = -1


class Supervisor:
    """Runs `count` workers (`work(link)` in a forked child, its return value the exit code)
    on sockets from `bind()`, until SIGTERM or SIGINT; `run()` returns the exit code."""

    def __init__(
        self,
        count: int,
        bind: Callable[[], list[socket.socket]],
        work: Callable[[WorkerLink], int],
        *,
        stop_timeout: float,
        announce: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = [_Slot(i + 1) for i in range(count)]
        self._bind = bind
        self._work = work
        self._stop_timeout = stop_timeout
        self._announce = announce
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._wakeup = (-1, -1)
        self._serving = False
        self._stopping = False
        self._deadline = 0.0
        self._killed = False
        self._code = 0

    def run(self) -> int:
        """Start the workers, keep them running, stop them on a signal; the exit code."""
        with self._signals():
            self._start(self._slots[0])
            while not (self._stopping and not self._live()):
                self._wait()
                self._reap()
                self._advance()
        return self._code

    # the supervisor's loop ------------------------------------------------------------
    def _live(self) -> list[_Slot]:
        return [s for s in self._slots if s.pid]

    def _wait(self) -> None:
        """Sleep until a signal, a readiness byte, or the next timer."""
        now = self._clock()
        timers = [s.due for s in self._slots if s.due is not None]
        if self._stopping and not self._killed:
            timers.append(self._deadline)
        timeout = max(0.0, min([now + 1.0, *timers]) - now)
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wakeup[0]:
                self._on_signals()
            else:
                self._on_ready(key.data)

    def _on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(self._wakeup[0], 64):
                if signum in _STOP_SIGNALS:
                    self._stop(f"{signal.Signals(signum).name} received")

    def _on_ready(self, slot: _Slot) -> None:
        try:
            data = os.read(slot.ready_fd, 64)
        except OSError:
            data = b""
        if data and not slot.ready:
            slot.ready = slot.ever_ready = True
            log.info("worker %d (pid %d) is serving", slot.index, slot.pid)
        if not data:  # EOF: the worker is gone or has said all it will
            self._selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = -1

    def _advance(self) -> None:
        """Move the start on, restart what is due, kill what outlived the stop deadline."""
        now = self._clock()
        if self._stopping:
            if not self._killed and now >= self._deadline:
                self._kill_all()
            return
        first = self._slots[0]
        if not self._serving and first.ever_ready:
            for slot in self._slots[1:]:
                if not slot.pid and slot.due is None and not slot.ever_ready:
                    self._start(slot)
            if all(s.ever_ready for s in self._slots):
                self._serving = True
                if self._announce is not None:
                    self._announce()
        for slot in self._slots:
            if slot.due is not None and now >= slot.due and not slot.pid:
                self._start(slot)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self._slots:
                if slot.pid == pid:
                    self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, code: int) -> None:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        pid, slot.pid, slot.ready = slot.pid, 0, False
        self._close_pipes(slot)
        if self._stopping:
            # Killed by the SIGTERM itself: it was still starting (nothing in flight yet).
            if code not in (0, -signal.SIGTERM):
                self._code = self._code or 1
                log.error("worker %d (pid %d) %s while stopping", slot.index, pid, how)
            return
        if not slot.ever_ready and not self._serving:
            log.error("worker %d (pid %d) %s before it was serving; stopping", slot.index, pid, how)
            print(
                f"weir: worker {slot.index} {how} before it was serving (its error is above)",
                file=sys.stderr,
                flush=True,
            )
            self._stop("a worker failed to start", code=1)
            return
        lived = self._clock() - slot.started
        slot.streak = 0 if lived >= _STABLE else slot.streak + 1
        delay = 0.0 if slot.streak == 0 else min(_CAP, _FIRST * 2 ** (slot.streak - 1))
        level = logging.ERROR if slot.streak >= 3 else logging.WARNING
        log.log(
            level, "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", slot.index, pid, how, lived, delay
        )
        slot.due = self._clock() + delay

    # starting and stopping workers ---------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        slot.due = None
        try:
            sockets = self._bind()
        except Exception as exc:
            self._retry_later(slot, str(exc))
            return
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        # Blocked across the fork: a signal in the child before it resets the handlers would
        # run the supervisor's handler there and wake the supervisor's loop.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(WorkerLink(slot.index, sockets, ready_w, life_r), (ready_r, life_w))
        except OSError as exc:
            os.close(ready_r)
            os.close(life_w)
            self._retry_later(slot, f"cannot start a process: {exc}")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            for sock in sockets:
                sock.close()  # the worker's now; a copy here would keep a dead worker's queue open
            os.close(ready_w)
            os.close(life_r)
        slot.pid, slot.started, slot.ready_fd, slot.life_fd = pid, self._clock(), ready_r, life_w
        self._selector.register(ready_r, selectors.EVENT_READ, slot)
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _retry_later(self, slot: _Slot, why: str) -> None:
        slot.streak += 1
        delay = min(_CAP, _FIRST * 2 ** (slot.streak - 1))
        log.error("worker %d: %s; trying again in %.1f s", slot.index, why, delay)
        slot.due = self._clock() + delay

    def _child(self, link: WorkerLink, own: tuple[int, int]) -> NoReturn:
        """In the forked worker: shed the supervisor's handlers and descriptors, then work."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            self._selector.close()
            for fd in (*own, *self._wakeup, *(f for s in self._slots for f in (s.ready_fd, s.life_fd))):
                if fd >= 0:
                    os.close(fd)
            code = self._work(link)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def _stop(self, why: str, code: int = 0) -> None:
        if self._stopping:
            log.info("already stopping; %s ignored", why)
            return
        self._stopping, self._code = True, code
        self._deadline = self._clock() + self._stop_timeout
        live = self._live()
        log.info("%s: stopping %d worker(s)", why, len(live))
        for slot in self._slots:
            slot.due = None
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        self._killed = True
        for slot in self._live():
            log.error(
                "worker %d (pid %d) still running %.0f s after SIGTERM; killing it",
                slot.index,
                slot.pid,
                self._stop_timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGKILL)
        self._code = self._code or 1

    def _close_pipes(self, slot: _Slot) -> None:
        if slot.ready_fd >= 0:
            self._selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = -1
        if slot.life_fd >= 0:
            os.close(slot.life_fd)
            slot.life_fd = -1

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Route SIGTERM, SIGINT and SIGCHLD to the loop through a wake-up pipe."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup = (r, w)
        self._selector.register(r, selectors.EVENT_READ)
        previous = {sig: signal.signal(sig, _noop) for sig in _SIGNALS}
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for slot in self._slots:
                self._close_pipes(slot)
            self._selector.close()
            os.close(r)
            os.close(w)


def _noop(signum: int, frame: object) -> None:
    """The Python-level handler: the wake-up pipe carries the signal to the loop."""
