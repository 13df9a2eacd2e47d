"""Start-up time and idle memory of `weir serve`, with billing on and with no plugins.

    python -m bench.startup              # 3 rounds per target, medians
    python -m bench.startup --rounds 5
    python -m bench.startup --no-pyc     # Weir's own modules compiled from source at each start

Each target runs the bundled proxy.yaml (the built-in mock upstream, the SQLite store in a
temporary directory, the admin console) with its port changed, and one more mock model,
`gpt-4o-mini`, so that a request can exercise an OpenAI model's exact token counting. The
"no plugins" target is the same file with its `plugins:` list emptied. Per round and target:

- *to /healthz*: from spawning `python -m proxy serve` (the code of `weir serve`) to the
  first 200 from `/healthz`, polled every 5 ms, and the CPU time (user + system) the server
  had used by then: on a shared machine the CPU time moves less than the wall time;
- *idle RSS*: VmRSS of the server 2 s after that, before any request;
- *first request*: the latency of one non-stream chat request for `gpt-4o-mini` (with a
  key made by the CLI before the server starts), and VmRSS 0.5 s after it.

Bytecode: by default Weir's own packages are compiled first (`compileall`, into the
git-ignored `__pycache__` directories) and the servers may write bytecode, as an installed
Weir (pip compiles what it installs) starts. `--no-pyc` removes those `__pycache__`
directories before each start and runs with PYTHONDONTWRITEBYTECODE=1, so that every start
compiles Weir's modules from source (the installed libraries keep their bytecode): what a
checkout run with PYTHONDONTWRITEBYTECODE set pays.

Rounds alternate the targets so that load on this shared machine lands on both alike. The
table shows the median over the rounds (min–max beside it). Every process is stopped when
the run ends, however it ends. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.targets import cli_key, cpu_seconds, rss_bytes
from bench.upstreams import HOST, child_env, free_port, spawn

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "plugins")
OPENAI_MODEL = "gpt-4o-mini"
POLL_EVERY = 0.005
IDLE_SECONDS = 2.0
TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One start of one target."""

    to_healthz: float
    cpu_to_healthz: float
    idle_rss: int
    first_request: float
    rss_after_request: int


def bundled_config(port: int, billing: bool) -> dict[str, Any]:
    """The bundled proxy.yaml as data, on `port`, with an OpenAI model on the mock upstream
    (priced by the LiteLLM reference list), and with or without its plugins."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "proxy.yaml").read_text())
    config["server"]["port"] = port
    config["server"]["host"] = HOST
    config["upstreams"][0]["models"].append(OPENAI_MODEL)
    if not billing:
        config["plugins"] = []
    return config


def _healthz_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def _chat(url: str, headers: Sequence[tuple[str, str]]) -> float:
    body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "Say hello to Weir."}], "max_tokens": 16}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    for name, value in headers:
        req.add_header(name, value)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"chat request answered {resp.status}")
    return time.perf_counter() - t0


def bytecode_env(pyc: bool) -> dict[str, str]:
    """The servers' environment; with `pyc`, Weir's packages are compiled now, else their
    bytecode caches are removed and none is written (see the module docstring)."""
    env = child_env()
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for package in PACKAGES:
            compileall.compile_dir(ROOT / package, quiet=1)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        for package in PACKAGES:
            for cache in (ROOT / package).rglob("__pycache__"):
                shutil.rmtree(cache, ignore_errors=True)
    return env


def start_once(billing: bool, pyc: bool) -> Sample:
    """Start one `weir serve` in a fresh temporary directory, measure it, stop it."""
    env = bytecode_env(pyc)
    with tempfile.TemporaryDirectory(prefix="weir-startup-") as tmp, ExitStack() as stack:
        home = Path(tmp)
        port = free_port()
        config = home / "proxy.yaml"
        config.write_text(yaml.safe_dump(bundled_config(port, billing), sort_keys=False))
        headers = cli_key("bench")(config) if billing else ()
        url = f"http://{HOST}:{port}"
        log = home / "weir.log"
        t0 = time.perf_counter()
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        proc = spawn(argv, stack, log, cwd=home, env=env)
        while not _healthz_ok(url + "/healthz"):
            if proc.poll() is not None or time.perf_counter() - t0 > TIMEOUT:
                raise RuntimeError(f"weir serve did not answer /healthz:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(POLL_EVERY)
        to_healthz = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid)
        time.sleep(IDLE_SECONDS)
        idle = rss_bytes(proc.pid)
        first = _chat(url, headers)
        time.sleep(0.5)
        return Sample(to_healthz, cpu, idle, first, rss_bytes(proc.pid))


def _cell(values: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def table(results: dict[str, list[Sample]]) -> str:
    """The Markdown table of medians (and ranges) per target."""
    lines = [
        "| target | to /healthz | CPU to /healthz | idle RSS (2 s) | first gpt-4o-mini request | RSS after it |",
        "|---|---|---|---|---|---|",
    ]
    mib = 1024 * 1024
    for name, samples in results.items():
        lines.append(
            f"| {name} | {_cell([s.to_healthz for s in samples], '{:.2f}')} s"
            f" | {_cell([s.cpu_to_healthz for s in samples], '{:.2f}')} s"
            f" | {_cell([s.idle_rss / mib for s in samples], '{:.0f}')} MiB"
            f" | {_cell([s.first_request * 1000 for s in samples], '{:.0f}')} ms"
            f" | {_cell([s.rss_after_request / mib for s in samples], '{:.0f}')} MiB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="starts per target (default 3)")
    parser.add_argument("--no-pyc", action="store_true", help="compile Weir's modules at every start")
    args = parser.parse_args(argv)
    targets = {"weir + billing (SQLite)": True, "weir, no plugins": False}
    results: dict[str, list[Sample]] = {name: [] for name in targets}
    for round_no in range(args.rounds):
        order = list(targets.items())
        if round_no % 2:
            order.reverse()
        for name, billing in order:
            results[name].append(start_once(billing, pyc=not args.no_pyc))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
