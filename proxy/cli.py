"""`weir …`: the command line. Every command takes `--config` (default `$WEIR_CONFIG`, then
./proxy.yaml) and `--json`; errors go to stderr with a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.cli_frame import CLIError, Command, plugin_registrars
from proxy.cli_serve import register as register_serve
from proxy.config import Config, ConfigError, load_config

__all__ = ["build_parser", "main"]


#: The core's own commands: running one of them needs no plugin's commands.
CORE_COMMANDS = frozenset(("serve", "check-config"))


def build_parser(with_plugins: bool = True) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """The argument parser and the command table: the core's commands, then (unless
    `with_plugins` is false) every installed plugin's (the `weir.cli` entry point group,
    see `proxy.cli_frame`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="path to proxy.yaml (default: $WEIR_CONFIG, then ./proxy.yaml)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = argparse.ArgumentParser(prog="weir", description="Weir: a billing reverse proxy for LLM APIs")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Command] = {}
    register_serve(sub, common, commands)
    for _name, register in plugin_registrars() if with_plugins else ():
        register(sub, common, commands)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `weir` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    # `weir serve` starts without importing every plugin's command modules (start-up time).
    parser, commands = build_parser(with_plugins=not argv or argv[0] not in CORE_COMMANDS)
    args = parser.parse_args(argv)
    name = args.command if args.command in commands else f"{args.command} {getattr(args, 'action', '')}".strip()
    try:
        return commands[name](args, _config(args))
    except ConfigError as exc:
        print(f"weir: config error: {exc}", file=sys.stderr)
        return 2
    except CLIError as exc:
        print(f"weir: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> Config:
    """The config a command runs with. A command that sets `config_optional` (it needs only
    defaults) runs on `Config()` when no config was named and ./proxy.yaml does not exist."""
    named = args.config or os.environ.get("WEIR_CONFIG")
    path = Path(named or "proxy.yaml")
    if named is None and getattr(args, "config_optional", False) and not path.exists():
        return Config()
    return load_config(path)


if __name__ == "__main__":
    sys.exit(main())
