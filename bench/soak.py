"""The soak: a real `weir serve` with billing on SQLite, at a fixed 25 requests/s with 5%
injected faults, for minutes, beside a direct baseline; then the books are checked.

    python -m bench.soak --minutes 30 [--seed 7] [--rate 25] [--write]

What runs: a healthy mock upstream (`python -m proxy.mock.upstream`), a second process
serving the misbehaving mocks (`python -m bench.soak --fault-mocks ...`), and `weir serve`
with a funded user and a limited key created through the CLI. First a closed-loop fill of
the same traffic grows the database by 1.25x SQLite's page cache, so the cache (a bounded
16 MiB that fills with the pages Weir writes) is full before memory is judged. Then an open
loop offers a fixed rate: stream and non-stream chat requests in the OpenAI wire format,
5% of them faults (client hang-ups mid-stream, upstream 500s, truncation, resets and error
events, hostile bodies, unknown keys), each request's kind drawn from a seeded RNG; halfway
between each two, a healthy request goes straight to the mock upstream (the baseline).

The rate is fixed rather than derived from a measured maximum: Weir serves 25 requests/s
with a few percent of one core, so a busy 2-vCPU machine still has room for it, and every
run offers the same load. Pass criteria (all must hold; `SoakReport.failures` names each
one that does not):
  * RSS plateaus: growth below 128 KiB per 1000 proxied requests, the median slope of RSS
    against requests started over the samples after the settle (a leak of 300 bytes a
    request shows ~300; a one-time step in a quarter of the samples or less shows 0);
  * p99 latency of healthy requests in the last minute is within 1.5x of the first
    minute's (or 10 ms above it), or its ratio to the direct baseline's p99 in the same
    minute is within 1.5x of the first minute's ratio: a machine-wide slowdown slows both
    paths, Weir's own degradation only one;
  * every request ended as its kind should (no healthy request failed, every fault was
    answered the way it should be, every direct request succeeded), and the driver never
    had to shed load;
  * no hold is left open once the run settles, and `weir audit` is clean;
  * the consume log's charges sum exactly to the user's balance change and to the key's;
    every healthy request whose usage the client saw was charged exactly that usage;
    refused requests were charged nothing and drained hang-ups were charged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from bench.soak_report import SoakReport, SoakSettings, judge, write_results
from bench.soak_traffic import Target, closed_loop, open_loop, serve_fault_mocks
from bench.targets import rss_bytes
from bench.upstreams import HOST, child_env, free_port, spawn, wait_http
from plugins.billing.store.base import LogRow
from plugins.billing.store.factory import make_store
from proxy.config import load_config

__all__ = ["SoakEnv", "SoakReport", "SoakSettings", "main", "run_soak", "start_env"]

USER = "soak"
FAULT_UPSTREAMS = ("slow", "e500", "trunc", "reset", "errev")


@dataclass(frozen=True, slots=True)
class SoakEnv:
    """The started processes and the account the traffic bills."""

    config: Path
    url: str
    key: str
    key_id: str
    weir_pid: int
    direct_url: str  # the healthy mock upstream, for the direct baseline


def _weir_config(home: Path, port: int, ok_url: str, faults: dict[str, str]) -> dict[str, Any]:
    upstreams = [{"name": "ok", "type": "mock", "base_url": ok_url, "models": ["soak-ok"]}]
    upstreams += [{"name": n, "type": "mock", "base_url": u, "models": [f"soak-{n}"]} for n, u in faults.items()]
    billing = {
        "quota_per_usd": 500_000,
        "pricing": {"fallback": "none", "models": {"soak-*": {"input": 1, "output": 2}}},
    }
    return {
        "server": {"host": HOST, "port": port, "shutdown_grace": 2.0, "max_body_bytes": 256 * 1024},
        "store": {"backend": "sqlite", "path": str(home / "weir.db"), "orphan_after": 30, "heartbeat_every": 5},
        "upstreams": upstreams,
        "plugins": [{"use": "billing", "config": billing}],
    }


def weir_cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `weir ARGS --config CONFIG` (as `python -m proxy`) and return its output."""
    argv = [sys.executable, "-m", "proxy", *args, "--config", str(config)]
    return subprocess.run(argv, check=check, env=child_env(), timeout=120, capture_output=True, text=True)


def start_env(home: Path, stack: ExitStack) -> SoakEnv:
    """Start the mocks and `weir serve` (stopped by `stack`), create the funded user and key."""
    ok_port, weir_port = free_port(), free_port()
    ports = {name: free_port() for name in FAULT_UPSTREAMS}
    ok = spawn(
        [sys.executable, "-m", "proxy.mock.upstream", "--host", HOST, "--port", str(ok_port)],
        stack,
        home / "mock-ok.log",
    )
    spec = ",".join(f"{n}={p}" for n, p in ports.items())
    bad = spawn([sys.executable, "-m", "bench.soak", "--fault-mocks", spec], stack, home / "mock-faults.log")
    wait_http(f"http://{HOST}:{ok_port}/v1/models", ok, home / "mock-ok.log")
    for port in ports.values():
        wait_http(f"http://{HOST}:{port}/v1/models", bad, home / "mock-faults.log")
    faults = {n: f"http://{HOST}:{p}" for n, p in ports.items()}
    config = home / "proxy.yaml"
    config.write_text(
        yaml.safe_dump(_weir_config(home, weir_port, f"http://{HOST}:{ok_port}", faults), sort_keys=False)
    )
    weir_cli(config, "user", "add", USER, "--quota", str(10**12))
    made = json.loads(
        weir_cli(config, "key", "create", USER, "--name", "soak", "--quota", str(10**11), "--json").stdout
    )
    # `python -m proxy serve` rather than the console script: the pid measured is the server.
    proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(config)], stack, home / "weir.log", cwd=home)
    url = f"http://{HOST}:{weir_port}"
    wait_http(url + "/healthz", proc, home / "weir.log")
    return SoakEnv(config, url, str(made["key"]), str(made["id"]), proc.pid, f"http://{HOST}:{ok_port}")


def balances(env: SoakEnv) -> tuple[int, int]:
    """(the user's wallet balance, the key's remaining quota), read through the CLI."""
    user = json.loads(weir_cli(env.config, "user", "show", USER, "--json").stdout)
    key = json.loads(weir_cli(env.config, "key", "show", env.key_id, "--json").stdout)
    return int(user["balance_quota"]), int(key["remaining_quota"])


async def _sample(env: SoakEnv, t0: float, report: SoakReport, stop: asyncio.Event) -> None:
    """Every second: Weir's RSS and the size of its database file."""
    db = env.config.parent / "weir.db"
    while not stop.is_set():
        now = time.monotonic() - t0
        report.rss.append((now, rss_bytes(env.weir_pid)))
        report.db.append((now, db.stat().st_size))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def fill_page_cache(target: Target, env: SoakEnv, s: SoakSettings, report: SoakReport) -> None:
    """Warm Weir up before the measured phase: the soak's mix, faults included, from
    `s.fill_clients` back-to-back clients until the database has grown by 1.25x SQLite's
    page cache (or for `s.fill_cap` seconds), then wait until its holds are settled.

    Every page a store connection writes stays in its page cache, up to 16 MiB: at the
    soak's low rate the cache would fill for the whole run, ~450 bytes of RSS per request,
    the size of a real leak. Filled first, it is flat during the measured phase. The fault
    paths make their one-time allocations here too, before memory is judged."""
    db = env.config.parent / "weir.db"
    base, t0, step = db.stat().st_size, time.monotonic(), 0
    report.rss_before_fill = rss_bytes(env.weir_pid)
    while db.stat().st_size - base < s.fill_bytes and time.monotonic() - t0 < s.fill_cap:
        report.fill_requests += await closed_loop(target, s.fill_clients, 5.0, s.seed + 100 + step, s.fault_rate)
        step += 1
    report.fill_seconds = time.monotonic() - t0
    report.fill_growth = db.stat().st_size - base
    await _wait_settled(env.config)


async def _wait_settled(config: Path, timeout: float = 60.0) -> None:
    store = make_store(load_config(config))
    await store.open()
    try:
        deadline = time.monotonic() + timeout
        while await store.open_holds() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def _settle(config: Path, timeout: float = 120.0) -> tuple[int, list[LogRow]]:
    """Wait until no hold is open (or `timeout`), then read every consume-log row."""
    store = make_store(load_config(config))
    await store.open()
    try:
        deadline = time.monotonic() + timeout
        while (holds := await store.open_holds()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        rows: list[LogRow] = []
        before: int | None = None
        while page := await store.query_logs(limit=5000, before_id=before):
            rows += page
            before = page[-1].id
        return len(holds), rows
    finally:
        await store.close()


async def _drive(env: SoakEnv, s: SoakSettings, report: SoakReport) -> None:
    target = Target(env.url, env.key, env.direct_url)
    if s.fill_bytes > 0:
        await fill_page_cache(target, env, s, report)
    report.rate = s.rate
    stop = asyncio.Event()
    t0 = time.monotonic()
    sampler = asyncio.create_task(_sample(env, t0, report, stop))
    try:
        load = await open_loop(target, s.rate, s.minutes * 60, s.seed, s.fault_rate, s.max_inflight)
    finally:
        stop.set()
        await sampler
    report.shots, report.direct, report.shed = load.shots, load.direct, load.shed
    report.duration = time.monotonic() - t0
    report.open_holds, report.rows = await _settle(env.config)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_soak(settings: SoakSettings, workdir: Path) -> SoakReport:
    """Run the whole soak in `workdir` and return its judged report (`.passed`, `.failures`)."""
    report = SoakReport(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        env = start_env(workdir, stack)
        balance0, key0 = balances(env)
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_drive(env, settings, report))
        audit = weir_cli(env.config, "audit", "--json", check=False)
        report.audit_ok = audit.returncode == 0
        report.audit_text = audit.stdout.strip() + audit.stderr.strip()
        balance1, key1 = balances(env)
        report.balance_delta, report.key_delta = balance0 - balance1, key0 - key1
    judge(report)
    samples = {"rss": report.rss, "db": report.db, "starts": [x.started for x in report.shots]}
    (workdir / "samples.json").write_text(json.dumps(samples))
    return report


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the children


def _fault_mocks(spec: str) -> int:
    ports = {name: int(port) for name, port in (item.split("=", 1) for item in spec.split(","))}
    try:
        asyncio.run(serve_fault_mocks(ports))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.soak`: run the soak and print (and with --write record) its figures."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="the measured phase, after the fill (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    p.add_argument("--rate", type=float, default=25.0, help="proxied requests/s offered (default 25)")
    p.add_argument("--workdir", type=Path, help="keep the config, database and logs here (default: a temp dir)")
    p.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    p.add_argument("--label", default="", help="with --write: added to the section's heading")
    p.add_argument("--fault-mocks", metavar="NAME=PORT,...", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fault_mocks:
        return _fault_mocks(args.fault_mocks)
    signal.signal(signal.SIGTERM, _sigterm)
    settings = SoakSettings(minutes=args.minutes, seed=args.seed, rate=args.rate)
    with tempfile.TemporaryDirectory(prefix="weir-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        report = run_soak(settings, workdir)
    command = "python -m bench.soak " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(report.summary())
    if args.write:
        write_results(report, command.strip(), label=args.label)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
