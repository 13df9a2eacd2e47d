"""How a request ends → what it is charged (spec §6). Pure: no I/O, unit-tested row by row.

Rows:
* completed with upstream usage → that usage (`upstream`);
* completed, usage missing (or all-zero while content was delivered) → estimated prompt +
  tokenizer count of the relayed output (`estimated`); all-zero usage with nothing
  delivered → 0 (released);
* broke mid-stream (truncated, error event, reset, shutdown, plugin failure) or client
  disconnect without a finished drain → upstream usage if any arrived (`upstream`), with
  the output raised to at least what was relayed, else estimated prompt + relayed output
  (`partial`); nothing delivered and no usage → 0 (released);
* Responses `response.incomplete`/`failed` carrying usage → that usage (`upstream`);
* a client disconnect under `drain` that read the upstream to its end → its usage.
Per-request models are charged their price when the request completed (or was drained to
completion), and nothing otherwise. Per-character models (text-to-speech) are charged the
characters of the request's input once any audio was delivered (`has_content`) or the
response completed: the upstream bills the whole synthesis, and a client that leaves before
the last byte has its audio (`usage_source` "request"; the log's `input` holds the
characters).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple

from plugins.billing.charges import charge_characters, charge_requests, charge_tokens
from plugins.billing.pricing import ModelPrice
from plugins.billing.tuples import new_tuple
from plugins.billing.usage import Usage
from proxy.plugin import EndReason

# Metered and Settlement are immutable named tuples rather than frozen dataclasses: both
# are built on every request, and a frozen dataclass costs ~1.4k instructions per field to
# build (each goes through object.__setattr__), a tuple a tenth of that.


class Metered(NamedTuple):
    """What the meter saw by the end of a response.

    `output_count` is the token count of the relayed output, or a function that counts it:
    only the estimated and partial rows need it, so a completed response with upstream
    usage never pays for tokenizing its output. `has_content` likewise may be a function
    (a stream's content events are read only when a row needs them).
    """

    usage: Usage | None
    has_content: bool | Callable[[], bool]
    terminal: bool
    output_count: int | Callable[[], int]
    prompt_estimate: int
    requests: int = 1

    def content(self) -> bool:
        """Whether any output was delivered (looked at now if it was given as a function)."""
        seen = self.has_content
        return seen if isinstance(seen, bool) else seen()

    def output(self) -> int:
        """The relayed output's token count (counted now if it was given as a function)."""
        count = self.output_count
        return count if isinstance(count, int) else count()


class Settlement(NamedTuple):
    """The decision: charge (0 means release), which usage, and where it came from."""

    charge: int
    usage: Usage
    usage_source: str


# Enum members looked up on the class cost ~1k instructions each (EnumType has a __getattr__).
_COMPLETED = EndReason.COMPLETED
_DISCONNECTED = EndReason.CLIENT_DISCONNECTED


def settle(
    reason: EndReason, metered: Metered, price: ModelPrice, multiplier: Decimal, quota_per_usd: int
) -> Settlement:
    """Apply the §6 table to one finished response."""
    finished = reason is _COMPLETED or (reason is _DISCONNECTED and metered.terminal)
    if price.per_request is not None:
        charge = charge_requests(price, metered.requests, multiplier, quota_per_usd) if finished else 0
        return Settlement(charge, metered.usage or Usage(), "upstream")
    if price.characters is not None:
        # The estimate carried the request's characters as its prompt (plugins.billing.estimate).
        chars = metered.prompt_estimate if finished or metered.content() else 0
        return Settlement(charge_characters(price, chars, multiplier, quota_per_usd), Usage(chars), "request")
    usage, source = _usage_for(finished, metered)
    # Every field, in order (`plugins.billing.tuples`): charge, usage, usage_source.
    return new_tuple(Settlement, (charge_tokens(price, usage, multiplier, quota_per_usd), usage, source))


def _usage_for(finished: bool, m: Metered) -> tuple[Usage, str]:
    real = m.usage
    # `any(real)` is `not real.is_zero` without the property call.
    if finished:
        if real is not None and any(real):
            return real, "upstream"
        if real is not None and not m.content():
            return Usage(), "upstream"
        return estimated(m), "estimated"
    if real is not None and any(real):
        relayed = m.output()
        if relayed > real.output:
            # Usage that arrived early (Anthropic's message_start) undercounts what was
            # already relayed; the client received at least this much.
            real = _with_output(real, relayed)
        return real, "upstream"
    if not m.content():
        return Usage(), "partial"
    return estimated(m), "partial"


def estimated(m: Metered) -> Usage:
    """Estimated prompt as uncached input, plus the counted relayed output."""
    return Usage(input=m.prompt_estimate, output=m.output())


def _with_output(u: Usage, output: int) -> Usage:
    return Usage(u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h, output, u.audio_in, u.audio_out, u.images)
