"""Resolving holds reliably: capture or release, retried until the store answers.

A resolution that fails because the store is unreachable is written to an outbox file (a
durable place outside the store) and retried with backoff (capped at 5 s) for as long as
the process lives: the hold stays in flight, so nothing else resolves it meanwhile. At
startup, and every `replay_every` seconds, the outbox files of other (dead) instances in
the same directory are replayed; at shutdown, pending retries are cancelled but stay in
this instance's file for the next start. Holds are idempotent, so a replay never charges
twice; if the process dies before a replay, the orphan rule (spec §5) covers the worst case.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from proxy.store.base import LogDetails, Resolution, Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)


class Outbox:
    """Pending resolutions, one JSON line each, in `<dir>/<instance>.jsonl`."""

    def __init__(self, directory: Path, instance_id: str) -> None:
        self.directory = directory
        self.path = directory / f"{instance_id}.jsonl"
        self._entries: dict[str, dict[str, Any]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        """Record a pending resolution durably (fsync'd)."""
        self._entries[entry["request_id"]] = entry
        self._write()

    def remove(self, request_id: str) -> None:
        """Forget a resolution that reached the store."""
        if self._entries.pop(request_id, None) is not None:
            self._write()

    def _write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for entry in self._entries.values():
                f.write(orjson.dumps(entry) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if self._entries:
            os.replace(tmp, self.path)
        else:
            tmp.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)

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
    """Capture/release with retry and an outbox."""

    def __init__(self, store: Store, outbox: Outbox | None) -> None:
        self.store = store
        self.outbox = outbox

    async def capture(self, request_id: str, amount: int, details: LogDetails) -> Resolution:
        """Charge `amount` on the hold (0 → release), retrying until the store answers."""
        # The first attempt calls the store directly: it nearly always succeeds, and each
        # coroutine layer on this path is paid by every request.
        try:
            if amount > 0:
                return await self.store.capture(request_id, amount, details)
            return await self.store.release(request_id, details)
        except StoreUnavailable as exc:
            failure = exc  # retried outside the handler, so later errors do not chain to it
        return await self._retry("capture" if amount > 0 else "release", request_id, amount, details, failure)

    async def release(self, request_id: str, details: LogDetails) -> Resolution:
        """Give the hold back, retrying until the store answers."""
        try:
            return await self.store.release(request_id, details)
        except StoreUnavailable as exc:
            failure = exc
        return await self._retry("release", request_id, 0, details, failure)

    async def _retry(
        self, op: str, request_id: str, amount: int, details: LogDetails, exc: StoreUnavailable
    ) -> Resolution:
        """After a first attempt failed with `exc`: queue in the outbox, retry with backoff."""
        log.error("store unavailable resolving %s; queued in the outbox, retrying: %s", request_id, exc)
        if self.outbox is not None:
            # Built only on this failure path: `asdict` cost ~80 µs a request.
            self.outbox.add({"op": op, "request_id": request_id, "amount": amount, "log": details._asdict()})
        delay = 0.05
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                result = await self._apply(op, request_id, amount, details)
            except StoreUnavailable:
                continue
            except StoreError:
                # The store answered and refused (e.g. a hold that was never written): no
                # retry can succeed, so the entry must not linger in the outbox.
                if self.outbox is not None:
                    self.outbox.remove(request_id)
                raise
            if self.outbox is not None:
                self.outbox.remove(request_id)
            return result

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
        for file, entry in self.outbox.load_all():
            if file == self.outbox.path:
                continue
            try:
                await self._apply_entry(entry)
            except StoreUnavailable:
                continue
            except StoreError as exc:
                log.error("outbox entry %s could not be applied: %s", entry.get("request_id"), exc)
            done += 1
            _drop_line(file, entry["request_id"])
        return done


def _drop_line(file: Path, request_id: str) -> None:
    kept = [line for line in file.read_bytes().splitlines()
            if line.strip() and orjson.loads(line).get("request_id") != request_id]
    if kept:
        file.write_bytes(b"\n".join(kept) + b"\n")
    else:
        file.unlink(missing_ok=True)
