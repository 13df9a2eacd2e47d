"""The CLI frame: what a command needs (`CLIError`, `emit`) and how plugins add commands.
Public API.

A plugin adds commands by naming a `register` function in the `weir.cli` entry point group
of its distribution (billing's is `plugins.billing.cli:register`):

    [project.entry-points."weir.cli"]
    mything = "mypkg.cli:register"

    def register(sub, common, commands):
        p = sub.add_parser("mything", parents=[common], help="...")
        commands["mything"] = run          # run(args, config) -> exit code

`sub` is the `weir` parser's subparsers, `common` the parent parser that gives every command
`--config` and `--json`. A command with sub-actions stores the action in `args.action` and
registers itself as `"name action"`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import orjson

from proxy.config import Config

__all__ = ["CLIError", "Command", "Register", "emit", "plugin_registrars"]

log = logging.getLogger(__name__)

#: A command: takes the parsed arguments and the loaded config, returns the exit code.
Command = Callable[[argparse.Namespace, Config], int]
#: A plugin's registration function (see the module docstring).
Register = Callable[[Any, argparse.ArgumentParser, dict[str, Command]], None]

#: The entry point group in which plugins name their `register` function.
ENTRY_POINT_GROUP = "weir.cli"


class CLIError(Exception):
    """A user-facing error: printed to stderr, exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as one JSON document with --json, else `text`."""
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def plugin_registrars() -> list[tuple[str, Register]]:
    """Every installed plugin's `register` function, by entry point name, in name order.

    A plugin whose entry point cannot be loaded is skipped with a warning, so that one
    broken plugin does not take away every other command."""
    found: list[tuple[str, Register]] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append((ep.name, ep.load()))
        except Exception as exc:  # an installed but broken plugin
            log.warning("weir: cannot load the commands of plugin %r (%s): %s", ep.name, ep.value, exc)
    return found
