"""The soak: a real `weir serve` with billing on SQLite, at half its measured maximum
throughput, for minutes, with 5% injected faults; then the books are checked.

    python -m bench.soak --minutes 30 [--seed 7] [--write]

What runs: a healthy mock upstream (`python -m proxy.mock_upstream`), a second process
serving the misbehaving mocks (`python -m bench.soak --fault-mocks ...`), and `weir serve`
with a funded user and a limited key created through the CLI. First a short closed-loop
ramp measures the maximum throughput of healthy traffic; then an open loop offers half of
it: stream and non-stream chat requests in the OpenAI wire format, 5% of them faults
(client hang-ups mid-stream, upstream 500s, truncation, resets and error events, hostile
bodies, unknown keys), each request's kind drawn from a seeded RNG.

Pass criteria (all must hold; `SoakReport.failures` names each one that does not):
  * RSS plateaus: growth below 1 MiB/min by a least-squares fit over the samples taken
    after the warm-up minute;
  * p99 latency of healthy requests in the last minute is within 1.5x of the first
    post-warm-up minute, or within 10 ms of it (whichever is larger);
  * every request ended as its kind should (no healthy request failed, every fault was
    answered the way it should be), and the driver never had to shed load;
  * no hold is left open once the run settles, and `weir audit` is clean;
  * the consume log's charges sum exactly to the user's balance change and to the key's;
    every healthy request whose usage the client saw was charged exactly that usage;
    refused requests were charged nothing and drained hang-ups were charged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from proxy.config import load_config
from proxy.store.base import LogRow
from proxy.store.factory import make_store

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


def _weir_config(home: Path, port: int, ok_url: str, faults: dict[str, str]) -> dict[str, Any]:
    upstreams = [{"name": "ok", "type": "mock", "base_url": ok_url, "models": ["soak-ok"]}]
    upstreams += [{"name": n, "type": "mock", "base_url": u, "models": [f"soak-{n}"]} for n, u in faults.items()]
    billing = {"quota_per_usd": 500_000, "pricing": {"fallback": "none", "models": {"soak-*": {"input": 1, "output": 2}}}}
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
    ok = spawn([sys.executable, "-m", "proxy.mock_upstream", "--host", HOST, "--port", str(ok_port)], stack, home / "mock-ok.log")
    spec = ",".join(f"{n}={p}" for n, p in ports.items())
    bad = spawn([sys.executable, "-m", "bench.soak", "--fault-mocks", spec], stack, home / "mock-faults.log")
    wait_http(f"http://{HOST}:{ok_port}/v1/models", ok, home / "mock-ok.log")
    for port in ports.values():
        wait_http(f"http://{HOST}:{port}/v1/models", bad, home / "mock-faults.log")
    faults = {n: f"http://{HOST}:{p}" for n, p in ports.items()}
    config = home / "proxy.yaml"
    config.write_text(yaml.safe_dump(_weir_config(home, weir_port, f"http://{HOST}:{ok_port}", faults), sort_keys=False))
    weir_cli(config, "user", "add", USER, "--quota", str(10**12))
    made = json.loads(weir_cli(config, "key", "create", USER, "--name", "soak", "--quota", str(10**11), "--json").stdout)
    # `python -m proxy serve` rather than the console script: the pid measured is the server.
    proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(config)], stack, home / "weir.log", cwd=home)
    url = f"http://{HOST}:{weir_port}"
    wait_http(url + "/healthz", proc, home / "weir.log")
    return SoakEnv(config, url, str(made["key"]), str(made["id"]), proc.pid)


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
        except asyncio.TimeoutError:
            pass


async def measure_max(target: Target, ramp: float, seed: int, config: Path | None = None) -> float:
    """Sustainable healthy requests per second: the best of three concurrencies over `ramp`
    seconds, each step's time including the wait until its holds are settled.

    Weir settles after the response, so a short burst outruns its own captures; counting
    only the responses overstated the maximum (about 2× on an idle machine), and half of it
    saturated the machine during the soak.
    """
    steps = (4, 16, 64)
    best = 0.0
    for i, clients in enumerate(steps):
        seconds = ramp / len(steps)
        t0 = time.monotonic()
        done = await closed_loop(target, clients, seconds, seed + i)
        if config is not None:
            await _wait_settled(config)
        best = max(best, done / (time.monotonic() - t0))
    return best


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
    target = Target(env.url, env.key)
    if s.rate is None:
        report.max_throughput = await measure_max(target, s.ramp, s.seed, env.config)
    report.rate = s.rate if s.rate is not None else max(1.0, report.max_throughput / 2)
    stop = asyncio.Event()
    t0 = time.monotonic()
    sampler = asyncio.create_task(_sample(env, t0, report, stop))
    try:
        report.shots, report.shed = await open_loop(
            target, report.rate, s.minutes * 60, s.seed, s.fault_rate, s.max_inflight
        )
    finally:
        stop.set()
        await sampler
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
    p.add_argument("--minutes", type=float, default=5.0, help="soak duration after the ramp (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    p.add_argument("--ramp", type=float, default=30.0, help="seconds spent measuring the maximum throughput")
    p.add_argument("--rate", type=float, help="offer this many requests/s (skips the ramp; for reproducing a run)")
    p.add_argument("--workdir", type=Path, help="keep the config, database and logs here (default: a temp dir)")
    p.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    p.add_argument("--fault-mocks", metavar="NAME=PORT,...", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fault_mocks:
        return _fault_mocks(args.fault_mocks)
    signal.signal(signal.SIGTERM, _sigterm)
    settings = SoakSettings(minutes=args.minutes, seed=args.seed, ramp=args.ramp, rate=args.rate)
    with tempfile.TemporaryDirectory(prefix="weir-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        report = run_soak(settings, workdir)
    command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report.summary())
    if args.write:
        write_results(report, command.strip())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
