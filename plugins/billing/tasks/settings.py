"""The `tasks:` block of the billing plugin's config (spec §9)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

__all__ = ["TasksConfig", "parse_factor"]


def parse_factor(value: Any, where: str) -> Fraction:
    """A non-negative multiplier, exactly: 1.5, "1.5" or "5/3"."""
    try:
        factor = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{where}: expected a number or a fraction such as 5/3, got {value!r}") from None
    if factor < 0:
        raise ValueError(f"{where}: must be >= 0, got {value!r}")
    return factor


@dataclass(frozen=True, slots=True)
class TasksConfig:
    """Async tasks: `max_age` (seconds after which an unfinished task is released),
    `poll_every` (seconds between polls of a task), `poll_timeout` (for one poll),
    `max_backoff` (the longest wait between polls, reached after failed polls or in a long
    task's life), `claim_batch` (tasks one instance takes per round), `poll_concurrency`,
    and `size_multipliers` (model glob → output size → price multiplier, e.g.
    `{"sora-2-pro*": {"1792x1024": "5/3"}}`)."""

    max_age: float = 86_400.0
    poll_every: float = 5.0
    poll_timeout: float = 30.0
    max_backoff: float = 300.0
    claim_batch: int = 16
    poll_concurrency: int = 8
    size_multipliers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_age", "poll_every", "poll_timeout", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"tasks.{name} must be greater than 0")
        if self.claim_batch < 1 or self.poll_concurrency < 1:
            raise ValueError("tasks.claim_batch and tasks.poll_concurrency must be at least 1")
        self._sizes()  # checks every multiplier

    def _sizes(self) -> list[tuple[str, dict[str, Fraction]]]:
        parsed = []
        for glob, sizes in self.size_multipliers.items():
            where = f"tasks.size_multipliers.{glob}"
            if not isinstance(sizes, dict):
                raise ValueError(f"{where}: expected a mapping of size to multiplier")
            parsed.append((glob, {str(s): parse_factor(v, f"{where}.{s}") for s, v in sizes.items()}))
        # Exact names first, then the longest pattern: the most specific wins.
        parsed.sort(key=lambda p: (any(c in p[0] for c in "*?["), -len(p[0]), p[0]))
        return parsed

    def size_factor(self, model: str, size: str) -> Fraction:
        """The multiplier for `size` of `model` (1 when none is configured)."""
        for glob, sizes in self._sizes():
            if fnmatch.fnmatchcase(model, glob):
                return sizes.get(size, Fraction(1))
        return Fraction(1)

    @property
    def lease(self) -> float:
        """How long a claimed task is this instance's to poll: one poll's timeout and a round."""
        return self.poll_timeout + self.poll_every
