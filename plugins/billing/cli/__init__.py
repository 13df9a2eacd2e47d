"""Billing's `weir` commands: accounts (users, keys, plans, subscriptions), logs, audit, holds,
pricing and async tasks. The CLI frame finds `register` through the `weir.cli` entry point group, as it
would find any plugin's commands."""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.cli import holds, keys, plans, pricing, records, tasks, users


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add billing's commands to the `weir` parser and the command table."""
    for module in (users, keys, plans, records, holds, pricing, tasks):
        module.register(sub, common, commands)
