"""`weir serve` and `weir check-config`: both take `--host` / `--port` (overriding
proxy.yaml's `server.host` / `server.port`) and both run `proxy.preflight`, so check-config
refuses exactly what serve refuses."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import TYPE_CHECKING, Any

from proxy.cli_frame import CLIError, emit
from proxy.config import Config, host_problem, port_problem, with_listener
from proxy.listen import ListenError, bind_sockets, display_address
from proxy.preflight import preflight

if TYPE_CHECKING:
    from aiohttp import web


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    problem = port_problem(port)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return port


def _host(text: str) -> str:
    problem = host_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _add_listener_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=_host, help="listen on this address (overrides server.host)")
    parser.add_argument("--port", type=_port, help="listen on this port (overrides server.port)")


def _serve(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web

    from proxy.app import PluginStartupError, create_app

    try:
        import uvloop
    except ImportError:  # optional speed-up
        uvloop = None  # type: ignore[assignment]
    config = with_listener(config, args.host, args.port)
    app = create_app(config)
    try:
        sockets = bind_sockets(config.server.host, config.server.port)
    except ListenError as exc:
        raise CLIError(str(exc), code=2) from None
    # After every lifespan (cleanup contexts run first among the startup signals).
    app.on_startup.append(_freeze_startup_objects)
    address = display_address(config.server.host, config.server.port)
    announce = f"weir: serving on http://{address} (config {config.source or 'defaults'})"
    try:
        web.run_app(
            app,
            sock=sockets,
            access_log=None,  # aiohttp's would log query strings, which may carry ?key=
            # Called once the sites listen on the sockets, after startup: only then do we say so.
            print=None if args.quiet else (lambda *_: print(announce, flush=True)),
            shutdown_timeout=config.server.shutdown_grace + 5,
            loop=uvloop.new_event_loop() if uvloop is not None else None,
            handle_signals=True,
        )
    except PluginStartupError as exc:
        # One line that names the plugin, and a non-zero exit: never a hang or a bare traceback.
        raise CLIError(f"startup failed: {exc}", code=3) from None
    finally:
        for sock in sockets:
            sock.close()
    return 0


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything allocated at startup (plugins' tables, vocabularies, price data) out of
    the collector's reach, so full GC passes scan only what requests allocate.

    Process-wide, so only here, where the process serves one app for its whole life: in
    `create_app` it would keep every app a process builds (and stops) alive forever."""
    gc.collect()
    gc.freeze()


def _check_config(args: argparse.Namespace, config: Config) -> int:
    config = with_listener(config, args.host, args.port)
    plugins, warnings = preflight(config)
    names = [p.name for p in plugins]
    for warning in warnings:
        print(f"weir: warning: {warning}", file=sys.stderr)
    data = {
        "ok": True,
        "source": config.source,
        "listen": display_address(config.server.host, config.server.port),
        "store": config.store.backend,
        "upstreams": [u.name for u in config.upstreams],
        "plugins": names,
        "warnings": list(warnings),
    }
    emit(args, data, f"ok: {len(config.upstreams)} upstream(s), plugins: {', '.join(names) or 'none'}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir serve` and `weir check-config`."""
    p = sub.add_parser("serve", parents=[common], help="start the proxy")
    p.add_argument("--quiet", action="store_true", help="do not print the 'serving on' line")
    _add_listener_flags(p)
    commands["serve"] = _serve
    p = sub.add_parser("check-config", parents=[common],
                       help="validate proxy.yaml and its plugins by every rule serve applies")
    _add_listener_flags(p)
    commands["check-config"] = _check_config
