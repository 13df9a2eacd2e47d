"""`weir serve` and `weir check-config`: both take `--host` / `--port` / `--workers`
(overriding proxy.yaml's `server.host` / `server.port` / `server.workers`) and both run
`proxy.preflight`, so check-config refuses exactly what serve refuses. With more than one
worker, serve runs `proxy.supervisor`, whose workers each run what a single process runs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from proxy.cli_frame import CLIError, emit
from proxy.config import Config, host_problem, port_problem, with_listener, workers_problem
from proxy.listen import ListenError, bind_sockets, display_address
from proxy.preflight import preflight

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.plugin import Plugin
    from proxy.supervisor import WorkerLink

log = logging.getLogger(__name__)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    problem = port_problem(port)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes, got {text!r}") from None
    problem = workers_problem(workers)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return workers


def _host(text: str) -> str:
    problem = host_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _add_listener_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=_host, help="listen on this address (overrides server.host)")
    parser.add_argument("--port", type=_port, help="listen on this port (overrides server.port)")
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="serve with N processes sharing the port and the store (overrides server.workers)",
    )


def _serve(args: argparse.Namespace, config: Config) -> int:
    from proxy.app import create_app

    config = with_listener(config, args.host, args.port, args.workers)
    if config.server.workers > 1:
        return _serve_workers(config, quiet=args.quiet)
    app = create_app(config)
    sockets = _bind(config)
    # After every lifespan (cleanup contexts run first among the startup signals).
    app.on_startup.append(_freeze_startup_objects)
    announce = _announcement(config, "")
    return _run(app, config, sockets, None if args.quiet else (lambda: print(announce, flush=True)))


def _bind(config: Config, reuse_port: bool = False) -> list[socket.socket]:
    try:
        return bind_sockets(config.server.host, config.server.port, reuse_port=reuse_port)
    except ListenError as exc:
        raise CLIError(str(exc), code=2) from None


def _announcement(config: Config, workers: str) -> str:
    address = display_address(config.server.host, config.server.port)
    return f"weir: serving on http://{address}{workers} (config {config.source or 'defaults'})"


def _run(
    app: web.Application, config: Config, sockets: list[socket.socket], listening: Callable[[], None] | None
) -> int:
    """Serve `app` on `sockets` until SIGTERM/SIGINT; `listening` is called once the sites
    listen (after startup): only then may anything say it serves."""
    from aiohttp import web

    from proxy.app import PluginStartupError

    try:
        import uvloop
    except ImportError:  # optional speed-up
        uvloop = None  # type: ignore[assignment]
    try:
        web.run_app(
            app,
            sock=sockets,
            access_log=None,  # aiohttp's would log query strings, which may carry ?key=
            print=None if listening is None else (lambda *_: listening()),
            shutdown_timeout=config.server.shutdown_grace + 5,
            loop=uvloop.new_event_loop() if uvloop is not None else None,
            handle_signals=True,
        )
    except PluginStartupError as exc:
        # One line that names the plugin, and a non-zero exit: never a hang or a bare
        # traceback (the plugins that had started are already torn down).
        print(f"weir: startup failed: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        for sock in sockets:
            sock.close()
    return 0


def _serve_workers(config: Config, quiet: bool) -> int:
    """`--workers N`: check the config and the address here, once (a taken port is the same
    one line and exit 2 as for one process), then supervise N workers (proxy/supervisor.py)."""
    from proxy.supervisor import Supervisor

    plugins, warnings = preflight(config)
    for warning in warnings:
        log.warning("!!! %s", warning)
    # Bound without SO_REUSEPORT, so that a Weir already on the port (with workers or not)
    # is refused here rather than joined; the workers' own sockets share the port.
    for sock in _bind(config):
        sock.close()
    # The workers are forked: what is loaded now is shared with them, and frozen it stays
    # shared (a collection in a worker would otherwise write to every object's header).
    gc.collect()
    gc.freeze()
    announce = _announcement(config, f" with {config.server.workers} workers")
    supervisor = Supervisor(
        config.server.workers,
        lambda: bind_sockets(config.server.host, config.server.port, reuse_port=True),
        lambda link: _work(config, plugins, link),
        # A worker drains within shutdown_grace and aiohttp's own timeout (grace + 5), then
        # closes its plugins and store: give it that and a margin before killing it.
        stop_timeout=config.server.shutdown_grace + 20,
        announce=None if quiet else (lambda: print(announce, flush=True)),
    )
    return supervisor.run()


def _work(config: Config, plugins: Sequence[Plugin], link: WorkerLink) -> int:
    """In a forked worker: serve as a single process does, with this worker's instance id,
    and tell the supervisor once the sockets listen."""
    from proxy.app import create_app
    from proxy.host import host_of

    # A distinct, readable instance id: billing's orphan rule keys on it, and each worker
    # heartbeats its own (the app still adds a random suffix per start).
    base = config.server.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, instance_id=f"{base}-w{link.index}"))
    app = create_app(config, plugins=plugins)

    async def attach(app: web.Application) -> None:
        link.attach(asyncio.get_running_loop())
        log.info("worker %d: pid %d, instance %s", link.index, os.getpid(), host_of(app).instance_id)

    app.on_startup.append(_freeze_startup_objects)
    app.on_startup.append(attach)
    return _run(app, config, link.sockets, link.ready)


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything allocated at startup (plugins' tables, vocabularies, price data) out of
    the collector's reach, so full GC passes scan only what requests allocate.

    Process-wide, so only here, where the process serves one app for its whole life: in
    `create_app` it would keep every app a process builds (and stops) alive forever."""
    gc.collect()
    gc.freeze()


def _check_config(args: argparse.Namespace, config: Config) -> int:
    config = with_listener(config, args.host, args.port, args.workers)
    plugins, warnings = preflight(config)
    names = [p.name for p in plugins]
    for warning in warnings:
        print(f"weir: warning: {warning}", file=sys.stderr)
    data = {
        "ok": True,
        "source": config.source,
        "listen": display_address(config.server.host, config.server.port),
        "workers": config.server.workers,
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
    p = sub.add_parser(
        "check-config", parents=[common], help="validate proxy.yaml and its plugins by every rule serve applies"
    )
    _add_listener_flags(p)
    commands["check-config"] = _check_config
