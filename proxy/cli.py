"""`weir …`: the command line. Every command takes `--config` (default `$WEIR_CONFIG`, then
./proxy.yaml) and `--json`; errors go to stderr with a non-zero exit code."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from proxy.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from aiohttp import web

Command = Callable[[argparse.Namespace, Config], int]


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


def _serve(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web

    from proxy.app import create_app

    try:
        import uvloop
    except ImportError:  # optional speed-up
        uvloop = None  # type: ignore[assignment]
    app = create_app(config)
    # After every lifespan (cleanup contexts run first among the startup signals).
    app.on_startup.append(_freeze_startup_objects)
    if config.source and not args.quiet:
        print(f"weir: serving on http://{config.server.host}:{config.server.port} (config {config.source})", flush=True)
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        access_log=None,  # aiohttp's would log query strings, which may carry ?key=
        print=None,
        shutdown_timeout=config.server.shutdown_grace + 5,
        loop=uvloop.new_event_loop() if uvloop is not None else None,
        handle_signals=True,
    )
    return 0


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything allocated at startup (plugins' tables, vocabularies, price data) out of
    the collector's reach, so full GC passes scan only what requests allocate.

    Process-wide, so only here, where the process serves one app for its whole life: in
    `create_app` it would keep every app a process builds (and stops) alive forever."""
    gc.collect()
    gc.freeze()


def _check_config(args: argparse.Namespace, config: Config) -> int:
    from proxy.loader import load_plugins

    names = [p.name for p in load_plugins(config.plugins)]
    data = {
        "ok": True,
        "source": config.source,
        "store": config.store.backend,
        "upstreams": [u.name for u in config.upstreams],
        "plugins": names,
    }
    emit(args, data, f"ok: {len(config.upstreams)} upstream(s), plugins: {', '.join(names) or 'none'}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """The argument parser and the command table."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("WEIR_CONFIG", "proxy.yaml"), help="path to proxy.yaml")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = argparse.ArgumentParser(prog="weir", description="Weir: a billing reverse proxy for LLM APIs")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Command] = {}
    p = sub.add_parser("serve", parents=[common], help="start the proxy")
    p.add_argument("--quiet", action="store_true")
    commands["serve"] = _serve
    sub.add_parser("check-config", parents=[common], help="validate proxy.yaml and the plugins it lists")
    commands["check-config"] = _check_config
    from plugins.billing.cli import register as register_pricing
    from proxy.cli_accounts import register as register_accounts

    register_accounts(sub, common, commands)
    register_pricing(sub, common, commands)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `weir` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    name = args.command if args.command in commands else f"{args.command} {getattr(args, 'action', '')}".strip()
    try:
        config = load_config(args.config)
        return commands[name](args, config)
    except ConfigError as exc:
        print(f"weir: config error: {exc}", file=sys.stderr)
        return 2
    except CLIError as exc:
        print(f"weir: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion for a CLI command."""
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
