"""An incremental Server-Sent Events parser for the relay (pure: no I/O, no aiohttp).

`SSEParser.feed()` takes upstream chunks as they arrive and returns every complete item in
stream order. An item is either an `SSEEvent` (a block that dispatches an event under the
WHATWG "event stream interpretation" rules) or plain `bytes` (a block that dispatches
nothing: comments such as `: ping`, blocks of only `id:`/`retry:` lines, stray blank
lines). Every item carries the exact bytes it was made of (`SSEEvent.raw`, or the bytes
item itself), so joining the items' bytes in order reproduces the stream byte for byte,
and the relay can forward an unchanged event without re-serialising it.

Framing notes:

- Lines end with CRLF, LF or CR. A block ends at its first empty line. When that empty
  line ends with a CR that is the last byte received so far, the event is emitted at once
  rather than held back waiting for a possible LF; such an LF then begins the next item's
  bytes, where it reads as an empty line before any field, which the spec makes a no-op.
- Per the spec, `id:` persists as the stream's last event id (`SSEParser.last_event_id`);
  `SSEEvent.id` is only the id given in the event's own block.
- `retry:` is honoured only when it is all ASCII digits (and at most 64 of them; anything
  longer is no usable reconnection time and would only cost CPU to convert).
- A UTF-8 BOM is skipped only at the very start of the stream; it stays in `raw`.
- Invalid UTF-8 decodes with U+FFFD replacement characters; the parser never raises on
  content, only `SSEOverflow` when one block outgrows `max_event_bytes`.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from proxy.context import SSEEvent

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEItem", "SSEOverflow", "SSEParser"]

DEFAULT_MAX_EVENT_BYTES: Final = 4 * 1024 * 1024

SSEItem: TypeAlias = "SSEEvent | bytes"

_BOM: Final = "\ufeff"
_MAX_RETRY_DIGITS: Final = 64


class SSEOverflow(ValueError):
    """One SSE block (complete or still growing) is larger than `max_event_bytes`.

    The parser's buffer is left as it was before the failing `feed()`, and items that read
    had already completed are not returned: abandon the stream, since the oversized event
    can never be delivered whole.
    """


class SSEParser:
    """Incremental parser. `feed()` returns complete items in order.

    Call `feed()` with each chunk and `flush()` once at EOF. Items are `SSEEvent` for
    blocks that dispatch an event and `bytes` for blocks that dispatch none (relay them
    unchanged: they are keep-alives and metadata).
    """

    __slots__ = ("_at_start", "_cr", "_last", "_last_id", "_max", "_n", "_parts", "_retry")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self._max = max_event_bytes
        # The incomplete block, kept as the chunks that brought it so that a long event
        # costs one join when it completes instead of a copy per chunk.
        self._parts: list[bytes] = []
        self._n = 0
        # The last buffered byte: enough to spot a block end straddling two chunks.
        self._last = b""
        self._cr = False  # a CR is buffered: the general (slow) splitter must run
        self._at_start = True  # nothing emitted yet: a leading BOM is still the stream's
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet emitted (the start of an incomplete block)."""
        return self._n

    @property
    def last_event_id(self) -> str | None:
        """The stream's last event id per the spec (persists across events), if any."""
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The last valid `retry:` value seen in any block, in milliseconds."""
        return self._retry

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[SSEItem]:
        """Buffer `chunk` and return the items it completes, in stream order.

        Raises `SSEOverflow` when a block exceeds `max_event_bytes`.
        """
        if not chunk:
            return []
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # raw must be immutable bytes whatever the caller holds
        cr = self._cr or b"\r" in chunk
        if self._n:
            if not self._completes(chunk, cr):
                self._stash(chunk, cr)
                return []
            data = b"".join([*self._parts, chunk])
        else:
            data = chunk
        out: list[SSEItem] = []
        pos = self._split_general(data, out) if cr else self._split_lf(data, out)
        rest = data[pos:]
        if len(rest) > self._max:
            raise SSEOverflow(f"an SSE event exceeds {self._max} bytes")
        self._parts = [rest] if rest else []
        self._n = len(rest)
        self._last = rest[-1:]
        self._cr = cr and b"\r" in rest
        if pos:
            self._at_start = False
        return out

    def flush(self) -> list[SSEItem]:
        """Return what is still buffered at EOF, as one `bytes` item (or nothing).

        Per the spec an event whose block never ended (no terminating empty line) is not
        dispatched, so it is never returned as an `SSEEvent`: the caller gets its raw
        bytes and decides (relay them, log a truncated stream, ...). The remainder may
        also be a lone line end that dispatches nothing (a trailing extra blank line, or
        the LF of a CRLF whose CR ended the last event). The buffer is emptied.
        """
        if not self._n:
            return []
        rest = b"".join(self._parts)
        self._parts = []
        self._n = 0
        self._last = b""
        self._cr = False
        self._at_start = False
        return [rest]

    def _completes(self, chunk: bytes, cr: bool) -> bool:
        """Whether buffered bytes plus `chunk` hold a block end (the buffer alone has none)."""
        if cr:
            edge = self._last + chunk[:1]
            return b"\n\r" in chunk or b"\n\n" in chunk or b"\r\r" in chunk or edge in (b"\n\n", b"\n\r", b"\r\r")
        return b"\n\n" in chunk or (chunk[0] == 10 and self._last == b"\n")

    def _stash(self, chunk: bytes, cr: bool) -> None:
        """Keep a chunk that ends no block, enforcing the size limit."""
        n = self._n + len(chunk)
        if n > self._max:
            raise SSEOverflow(f"an SSE event exceeds {self._max} bytes")
        self._parts.append(chunk)
        self._n = n
        self._last = chunk[-1:]
        self._cr = cr

    def _split_lf(self, data: bytes, out: list[SSEItem]) -> int:
        """Emit the complete blocks of `data`, which holds no CR; return the bytes used.

        The fast path: a single `data: ` line ended by a blank line becomes an event
        without the general line interpreter.
        """
        find = data.find
        n = len(data)
        limit = self._max
        pos = 0
        bom = self._at_start
        while True:
            nl = find(b"\n", pos)
            if nl < 0 or nl + 1 >= n:
                return pos
            if data[nl + 1] == 10:
                stop = nl + 2
                if stop - pos > limit:
                    raise SSEOverflow(f"an SSE event exceeds {limit} bytes")
                if data.startswith(b"data: ", pos):
                    text = data[pos + 6 : nl].decode("utf-8", "replace")
                    out.append(SSEEvent(text, None, None, None, data[pos:stop]))
                else:
                    out.append(self._block(data[pos:stop], bom))
            else:
                end = find(b"\n\n", nl + 1)
                if end < 0:
                    return pos
                stop = end + 2
                if stop - pos > limit:
                    raise SSEOverflow(f"an SSE event exceeds {limit} bytes")
                out.append(self._block(data[pos:stop], bom))
            pos = stop
            bom = False

    def _split_general(self, data: bytes, out: list[SSEItem]) -> int:
        """Emit the complete blocks of `data` with any line endings; return the bytes used.

        A CR is a whole line end unless an LF follows it, so an empty line follows a line
        end exactly where the byte pairs LF LF, LF CR or CR CR occur. The next occurrence
        of each pair is cached and searched again only once the parser has moved past it.
        """
        find = data.find
        n = len(data)
        limit = self._max
        pos = 0
        bom = self._at_start
        lf_lf = _found(find(b"\n\n"), n)
        lf_cr = _found(find(b"\n\r"), n)
        cr_cr = _found(find(b"\r\r"), n)
        while True:
            hit = min(lf_lf, lf_cr, cr_cr)
            if hit >= n:
                return pos
            stop = hit + 2
            if data[hit + 1] == 13 and stop < n and data[stop] == 10:
                stop += 1  # the empty line ends with CRLF
            if stop - pos > limit:
                raise SSEOverflow(f"an SSE event exceeds {limit} bytes")
            out.append(self._block(data[pos:stop], bom))
            pos = stop
            bom = False
            if lf_lf < pos:
                lf_lf = _found(find(b"\n\n", pos), n)
            if lf_cr < pos:
                lf_cr = _found(find(b"\n\r", pos), n)
            if cr_cr < pos:
                cr_cr = _found(find(b"\r\r", pos), n)

    def _block(self, raw: bytes, bom: bool) -> SSEItem:
        """Interpret one complete block (it ends with an empty line) per the spec."""
        text = raw.decode("utf-8", "replace")
        if bom and text.startswith(_BOM):
            text = text[1:]
        if text.startswith("data: "):
            # One data line (the relay's common case with CRLF): skip the interpreter.
            value = text.rstrip("\r\n")[6:]
            if "\n" not in value and "\r" not in value:
                return SSEEvent(value, None, None, None, raw)
        if "\r" in text:
            # Left to right, CRLF first: exactly the spec's tokenisation of line ends.
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        data: list[str] | None = None
        event: str | None = None
        event_id: str | None = None
        retry: int | None = None
        for line in text.split("\n"):
            if not line or line[0] == ":":
                continue  # the terminating/leading empty lines, and comments
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                if "\0" not in value:
                    event_id = value
            elif name == "retry":
                if value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                    retry = int(value)
        if event_id is not None:
            self._last_id = event_id
        if retry is not None:
            self._retry = retry
        if data is None:
            return raw
        return SSEEvent("\n".join(data), event or None, event_id, retry, raw)


def _found(index: int, missing: int) -> int:
    """`str.find`'s result with "not found" (-1) mapped to `missing`, for use in min()."""
    return missing if index < 0 else index
