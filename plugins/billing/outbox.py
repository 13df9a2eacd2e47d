"""Resolving holds reliably: capture or release, retried until the store answers.

A resolution whose first attempt fails because the store is unreachable (Redis down, SQLite
locked, or unable to write: a full disk, an I/O error) is kept **in memory** and retried with
backoff (capped at 5 s) for as long as the process lives: the hold stays in flight, so
nothing else resolves it meanwhile. `Settler.pending()` counts these; the plugin exports the
count as `weir_billing_pending_settlements` and logs it every minute while it is non-zero.

It is also written to an outbox file, `<dir>/<instance>.jsonl`, so that it survives the death
of the process: at startup, and every `replay_every` seconds, the outbox files of other (dead)
instances in the same directory are replayed; at shutdown, pending retries are cancelled but
stay in this instance's file for the next start. The outbox is a second copy, never a
condition: a write that fails (any `OSError`: ENOSPC, EFBIG, EIO, a read-only filesystem) is
logged once per failure streak, its temporary file removed, and the retry goes on from
memory; the file is rewritten once writes work again.

Where the outbox lives (docs/reliability.md, "When the store cannot be written"): beside
proxy.yaml, not in the store. It is needed only when the store cannot be written, so a table
in the SQLite file (behind the same lock, on the same disk) or a key in Redis would fail
exactly when it is needed. A full disk shared by the database and the outbox defeats the
file too; the in-memory retry is what survives that, and only the death of the process
during such an outage leaves a hold to the orphan rule (spec §5: its last checkpoint, or
nothing: under-billing, never a double charge).

Holds are idempotent per request id: a retry or a replay of a capture that did land (an
acknowledgement lost on the way back) reports the first resolution and charges nothing more.
A *definitive* refusal (`StoreError` that is not `StoreUnavailable`: an unknown hold, a
constraint) is never retried and never silent: it is logged at ERROR with the request id,
the operation and the amount, counted (`failures`, exported as
`weir_billing_settlement_failures_total`), removed from the outbox, and the hold is left as
it is for `weir audit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from plugins.billing.store.base import LogDetails, Resolution, Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

#: At most one rewrite of a failing outbox per this many seconds (each is O(entries)).
_REWRITE_EVERY = 1.0


class Outbox:
    """Pending resolutions, one JSON line each, in `<dir>/<instance>.jsonl`.

    Writes never raise: a failed write is logged once per failure streak and retried by
    `flush()`; `durable` says whether the file matches the entries in memory."""

    def __init__(self, directory: Path, instance_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.path = directory / f"{instance_id}.jsonl"
        self._entries: dict[str, dict[str, Any]] = {}
        self._clock = clock
        self._failed_at: float | None = None  # when the last write failed; None: the file is current

    @property
    def durable(self) -> bool:
        """True when the file holds exactly the entries in memory (the last write worked)."""
        return self._failed_at is None

    def add(self, entry: dict[str, Any]) -> bool:
        """Record a pending resolution durably (fsync'd); False if the file could not be written."""
        self._entries[entry["request_id"]] = entry
        return self._write()

    def remove(self, request_id: str) -> None:
        """Forget a resolution that reached the store (or was refused for good)."""
        if self._entries.pop(request_id, None) is not None or not self.durable:
            self._write()

    def flush(self) -> bool:
        """Rewrite the file if an earlier write failed (at most once per second); True when current."""
        failed_at = self._failed_at
        if failed_at is not None and self._clock() - failed_at >= _REWRITE_EVERY:
            self._write()
        return self.durable

    def _write(self) -> bool:
        tmp = self.path.with_suffix(".tmp")
        try:
            self._replace(tmp)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if self._failed_at is None:
                log.error(
                    "billing: cannot write the outbox %s (%s); pending settlements are kept in memory and "
                    "retried, but would be lost if the process died now",
                    self.path,
                    exc,
                )
            self._failed_at = self._clock()
            return False
        if self._failed_at is not None:
            log.warning("billing: the outbox %s is writable again (%d pending)", self.path, len(self._entries))
            self._failed_at = None
        return True

    def _replace(self, tmp: Path) -> None:
        if not self._entries:
            self.path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for entry in self._entries.values():
                f.write(orjson.dumps(entry) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load_all(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every entry in every outbox file of the directory (this and dead instances)."""
        found: list[tuple[Path, dict[str, Any]]] = []
        if not self.directory.is_dir():
            return found
        for file in sorted(self.directory.glob("*.jsonl")):
            for line in file.read_bytes().splitlines():
                if line.strip():
                    try:
                        found.append((file, orjson.loads(line)))
                    except orjson.JSONDecodeError:
                        log.error("outbox %s: unreadable line skipped", file)
        return found


class Settler:
    """Capture/release with retry from memory and an outbox; counts what waits and what failed."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox | None,
        clock: Callable[[], float] = time.monotonic,
        first_delay: float = 0.05,
        max_delay: float = 5.0,
        on_store_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        """`on_store_error(op, exc)` is told of every store failure met (for metrics)."""
        self.store = store
        self.outbox = outbox
        self.first_delay = first_delay
        self.max_delay = max_delay
        #: Definitive refusals so far, by operation ("capture", "release").
        self.failures = {"capture": 0, "release": 0}
        #: Resolutions that had to wait for the store (kept pending and retried).
        self.retried = 0
        self._on_store_error = on_store_error
        self._clock = clock
        self._pending: dict[str, float] = {}  # request id → when its first attempt failed

    def pending(self) -> int:
        """How many resolutions are waiting for the store (retried from memory)."""
        return len(self._pending)

    def oldest_pending(self) -> float:
        """Seconds the oldest waiting resolution has waited (0 when none waits)."""
        return self._clock() - min(self._pending.values()) if self._pending else 0.0

    async def capture(self, request_id: str, amount: int, details: LogDetails) -> Resolution:
        """Charge `amount` on the hold (0 → release), retrying until the store answers.

        A definitive refusal is logged, counted and raised (the hold is left as it is)."""
        # The first attempt calls the store directly: it nearly always succeeds, and each
        # coroutine layer on this path is paid by every request.
        try:
            if amount > 0:
                return await self.store.capture(request_id, amount, details)
            return await self.store.release(request_id, details)
        except StoreUnavailable as exc:
            failure = exc  # retried outside the handler, so later errors do not chain to it
        except StoreError as exc:
            self._refused("capture" if amount > 0 else "release", request_id, amount, exc)
            raise
        return await self._retry("capture" if amount > 0 else "release", request_id, amount, details, failure)

    async def release(self, request_id: str, details: LogDetails) -> Resolution:
        """Give the hold back, retrying until the store answers; a definitive refusal is
        logged, counted and raised (`capture` of 0)."""
        return await self.capture(request_id, 0, details)

    async def release_if_held(self, request_id: str, details: LogDetails) -> Resolution | None:
        """Release a hold that may never have been written (its hold call failed): as
        `release`, but a refusal means there was nothing to give back (None, no alarm)."""
        try:
            return await self.store.release(request_id, details)
        except StoreUnavailable as exc:
            failure = exc
        except StoreError as exc:
            log.info("billing: no hold to release for %s: %s", request_id, exc)
            return None
        try:
            return await self._retry("release", request_id, 0, details, failure, expect_refusal=True)
        except StoreError:
            return None

    async def _retry(
        self,
        op: str,
        request_id: str,
        amount: int,
        details: LogDetails,
        exc: StoreUnavailable,
        expect_refusal: bool = False,
    ) -> Resolution:
        """After a first attempt failed with `exc`: keep it pending, queue it in the outbox,
        retry with capped backoff until the store answers (or the task is cancelled)."""
        log.error("store unavailable resolving %s; kept pending and retried: %s", request_id, exc)
        self.retried += 1
        self._store_error(op, exc)
        self._pending[request_id] = self._clock()
        try:
            if self.outbox is not None:
                # Built only on this failure path: `asdict` cost ~80 µs a request.
                self.outbox.add({"op": op, "request_id": request_id, "amount": amount, "log": details._asdict()})
            return await self._until_answered(op, request_id, amount, details, expect_refusal)
        except asyncio.CancelledError:
            self._abandoned(op, request_id, amount)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def _until_answered(
        self, op: str, request_id: str, amount: int, details: LogDetails, expect_refusal: bool
    ) -> Resolution:
        delay = self.first_delay
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)
            if self.outbox is not None:
                self.outbox.flush()
            try:
                result = await self._apply(op, request_id, amount, details)
            except StoreUnavailable as again:
                self._store_error(op, again)
                continue
            except StoreError as refusal:
                # The store answered and refused (e.g. a hold that was never written): no
                # retry can succeed, so the entry must not linger in the outbox.
                if self.outbox is not None:
                    self.outbox.remove(request_id)
                if expect_refusal:
                    log.info("billing: no hold to release for %s: %s", request_id, refusal)
                else:
                    self._refused(op, request_id, amount, refusal)
                raise
            if self.outbox is not None:
                self.outbox.remove(request_id)
            return result

    def _store_error(self, op: str, exc: BaseException) -> None:
        if self._on_store_error is not None:
            self._on_store_error(op, exc)

    def _refused(self, op: str, request_id: str, amount: int, exc: StoreError) -> None:
        self.failures[op] = self.failures.get(op, 0) + 1
        self._store_error(op, exc)
        log.error(
            "billing: the store refused to %s request %s (amount %d): %s; the hold is left as it is for `weir audit`",
            op,
            request_id,
            amount,
            exc,
        )

    def _abandoned(self, op: str, request_id: str, amount: int) -> None:
        if self.outbox is not None and self.outbox.flush():
            log.warning(
                "billing: %s of %s (amount %d) stopped at shutdown; it stays in %s for the next start",
                op,
                request_id,
                amount,
                self.outbox.path,
            )
            return
        log.error(
            "billing: %s of %s (amount %d) stopped at shutdown while the outbox could not be "
            "written; unless an earlier copy is there, the orphan rule will resolve its hold",
            op,
            request_id,
            amount,
        )

    async def _apply(self, op: str, request_id: str, amount: int, details: LogDetails) -> Resolution:
        if op == "capture":
            return await self.store.capture(request_id, amount, details)
        return await self.store.release(request_id, details)

    async def _apply_entry(self, entry: dict[str, Any]) -> Resolution:
        return await self._apply(entry["op"], entry["request_id"], int(entry["amount"]), LogDetails(**entry["log"]))

    async def replay(self) -> int:
        """Apply every entry in other instances' outbox files (this instance's own entries
        are being retried by their tasks); returns how many were applied."""
        if self.outbox is None:
            return 0
        done = 0
        stuck: OSError | None = None
        for file, entry in self.outbox.load_all():
            if file == self.outbox.path:
                continue
            try:
                await self._apply_entry(entry)
            except StoreUnavailable:
                continue
            except StoreError as exc:
                # Not counted as a failure: a dead instance's release of a hold that was never
                # written (its hold call failed) is refused like this, and is harmless.
                log.error("outbox entry %s could not be applied: %s", entry.get("request_id"), exc)
            done += 1
            try:
                _drop_line(file, entry["request_id"])
            except OSError as exc:  # a full disk must not stop the other entries' replay
                stuck = exc
        if stuck is not None:
            log.error(
                "billing: cannot remove replayed entries from the outbox (%s); they will be replayed again, as no-ops",
                stuck,
            )
        return done


def _drop_line(file: Path, request_id: str) -> None:
    kept = [
        line
        for line in file.read_bytes().splitlines()
        if line.strip() and orjson.loads(line).get("request_id") != request_id
    ]
    if kept:
        file.write_bytes(b"\n".join(kept) + b"\n")
    else:
        file.unlink(missing_ok=True)
