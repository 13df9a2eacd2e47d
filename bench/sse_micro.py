"""Micro-benchmark of the SSE parser: CPU per event on realistic upstream streams.

Run with `python -m bench.sse_micro`. Each stream is 1000 events of about 200 bytes, cut
into reads of 1-3 KB at arbitrary offsets (seeded, so runs are comparable), the way
`iter_any()` hands them to the relay. Prints the best of several rounds of process CPU
time, in microseconds per event.
"""

from __future__ import annotations

import random
import time

from proxy.sse import SSEParser

EVENTS = 1000
ROUNDS = 30


def openai_stream(events: int = EVENTS, newline: bytes = b"\n") -> bytes:
    """An OpenAI chat-completions stream: one `data:` line per chunk, then `[DONE]`."""
    out = []
    for i in range(events - 2):
        payload = (
            '{"id":"chatcmpl-9xQ2bM7uV3kR5tYzL1pA8sDfGhJk","object":"chat.completion.chunk",'
            '"created":1718000000,"model":"gpt-4o-mini","choices":[{"index":0,'
            f'"delta":{{"content":" tok{i}"}},"finish_reason":null}}]}}'
        )
        out.append(b"data: " + payload.encode() + newline + newline)
    usage = (
        '{"id":"chatcmpl-9xQ2bM7uV3kR5tYzL1pA8sDfGhJk","object":"chat.completion.chunk",'
        '"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":998,"total_tokens":1010}}'
    )
    out.append(b"data: " + usage.encode() + newline + newline)
    out.append(b"data: [DONE]" + newline + newline)
    return b"".join(out)


def anthropic_stream(events: int = EVENTS) -> bytes:
    """An Anthropic messages stream: `event:` plus `data:` lines per event."""
    out = []
    for i in range(events):
        payload = (
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
            f'"text":" token number {i} of the answer"}}}}'
        )
        out.append(b"event: content_block_delta\ndata: " + payload.encode() + b"\n\n")
    return b"".join(out)


def cut(stream: bytes, seed: int = 1) -> list[bytes]:
    """Split `stream` into reads of 1-3 KB, at arbitrary byte offsets."""
    rng = random.Random(seed)
    reads, pos = [], 0
    while pos < len(stream):
        size = rng.randint(1024, 3072)
        reads.append(stream[pos : pos + size])
        pos += size
    return reads


def per_event_us(reads: list[bytes]) -> tuple[float, int]:
    """Best-of-ROUNDS CPU time to parse `reads`: (microseconds per event, events)."""
    best = float("inf")
    events = 0
    for _ in range(ROUNDS):
        parser = SSEParser()
        items = 0
        start = time.process_time()
        for read in reads:
            items += len(parser.feed(read))
        items += len(parser.flush())
        best = min(best, time.process_time() - start)
        events = items
    return best / events * 1e6, events


def main() -> None:
    """Print µs per event for each stream shape."""
    cases = {
        "openai, LF (fast path)": openai_stream(),
        "openai, CRLF (general path)": openai_stream(newline=b"\r\n"),
        "anthropic, event+data lines": anthropic_stream(),
    }
    for name, stream in cases.items():
        reads = cut(stream)
        figure, events = per_event_us(reads)
        print(f"{name:28s} {events} events x {len(stream) / events:.0f} B in {len(reads)} reads: {figure:.2f} us/event")


if __name__ == "__main__":
    main()
