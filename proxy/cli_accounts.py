"""Account commands (users, keys, plans, subscriptions, logs, audit). Filled in by the
accounts work; registers nothing yet."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add the account commands to the `weir` parser."""
