"""Micro-benchmark of the billing hot paths: the hold estimate and the usage meter.

Run with `python -m bench.estimate_micro`. The estimate case is a chat request whose
prompt is about 2 KB of English prose and code (a system message plus a user message),
estimated for an o200k model, a cl100k model and a heuristic-counted model; the target is
at most 0.2 ms per estimate. The meter case feeds parsed stream chunks, as the billing
plugin does for every relayed event. Prints the best of several rounds of process CPU
time (encodings are loaded before timing).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from plugins.billing.estimate import Estimator
from plugins.billing.meter import UsageMeter
from plugins.billing.pricing import ModelPrice
from plugins.billing.tokenizer import Tokenizer
from proxy.context import Endpoint

ROUNDS = 15
CALLS = 500
PRICE = ModelPrice.tokens(Decimal("0.15"), Decimal("0.60"), cache_read=Decimal("0.075"))

_PROSE = (
    "Weir is a streaming reverse proxy for LLM APIs. Its billing plugin holds an estimate of "
    "the cost, taken from the request body, reads the usage from the streamed response and, "
    "when the response ends, settles the real charge or releases the hold. "
)
_CODE = (
    "def settle(hold, usage):\n"
    "    charge = charge_tokens(price, usage, multiplier, quota_per_usd)\n"
    "    return store.capture(hold.request_id, charge, log)\n"
)


def chat_body(variant: int) -> dict[str, Any]:
    """A ~2 KB chat request; `variant` changes a word so bodies are not identical."""
    user = (_PROSE * 6 + _CODE * 4)[:1900] + f" (request {variant})"
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a careful assistant who answers briefly."},
            {"role": "user", "content": user},
        ],
    }


def best_us(fn: Any, calls: int = CALLS) -> float:
    """Best-of-ROUNDS CPU time of `calls` invocations of `fn(i)`, in µs per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for i in range(calls):
            fn(i)
        best = min(best, time.process_time() - start)
    return best / calls * 1e6


def estimate_cases(estimator: Estimator) -> None:
    """Print µs per 2 KB chat estimate for each counting family."""
    bodies = [chat_body(i) for i in range(16)]
    size = len(bodies[0]["messages"][0]["content"]) + len(bodies[0]["messages"][1]["content"])
    for model in ("gpt-4o-mini", "gpt-4", "claude-sonnet-4-5"):
        figure = best_us(lambda i, m=model: estimator.estimate(Endpoint.CHAT, bodies[i % 16], m, PRICE, Decimal(1)))
        print(f"estimate, chat {size} B prompt, {model:18s} {figure:7.1f} us")


def meter_cases() -> None:
    """Print µs per fed chunk for an OpenAI and an Anthropic content chunk."""
    openai_chunk = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
        "usage": None,
    }
    anthropic_chunk = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " token"}}
    for name, endpoint, chunk in (
        ("openai chat", Endpoint.CHAT, openai_chunk),
        ("anthropic", Endpoint.MESSAGES, anthropic_chunk),
    ):
        meter = UsageMeter(endpoint)
        figure = best_us(lambda _i, m=meter, c=chunk: m.feed(c), calls=20_000)
        print(f"meter feed, {name:14s} chunk               {figure:7.2f} us")


def main() -> None:
    """Run every case."""
    tokenizer = Tokenizer()
    tokenizer.warm()
    estimator = Estimator(tokenizer, 500_000, 4096, {"gpt-4o-mini": 16384}.get)
    estimate_cases(estimator)
    meter_cases()


if __name__ == "__main__":
    main()
