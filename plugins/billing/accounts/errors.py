"""The one error the account functions raise: `AccountError(code, message)`.

The CLI prints the message and exits 1; the admin API answers `{"error": {"code", "message"}}`
with `status`. A store that cannot be reached is not an account error: `StoreUnavailable`
passes through (the CLI exits 3, the API answers 503).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from plugins.billing.store.base import StoreError, StoreUnavailable

INVALID: Final = "invalid"
"""The input is wrong (a bad amount, time, name, network or option)."""
NOT_FOUND: Final = "not_found"
"""An unknown user, key, plan, subscription or hold."""
CONFLICT: Final = "conflict"
"""The input is fine but the state refuses it (a name taken, a revoked key, a plan in use)."""

STATUS = {INVALID: 400, NOT_FOUND: 404, CONFLICT: 409}
"""The HTTP status of each code."""


class AccountError(Exception):
    """A refused account operation: `code` (invalid, not_found, conflict) and a message
    that says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status for this error (400, 404 or 409)."""
        return STATUS.get(self.code, 400)


def invalid(message: str) -> AccountError:
    """An `invalid` AccountError."""
    return AccountError(INVALID, message)


def not_found(message: str) -> AccountError:
    """A `not_found` AccountError."""
    return AccountError(NOT_FOUND, message)


def conflict(message: str) -> AccountError:
    """A `conflict` AccountError."""
    return AccountError(CONFLICT, message)


@contextmanager
def refused_as_conflict() -> Iterator[None]:
    """A store refusal (`StoreError`, not `StoreUnavailable`) becomes a `conflict`.

    The account functions check their input before calling the store, so what the store
    still refuses is a state it found in its own atomic step (a key revoked meanwhile, a
    plan subscribed to meanwhile)."""
    try:
        yield
    except StoreUnavailable:
        raise
    except StoreError as exc:
        raise conflict(str(exc)) from None
