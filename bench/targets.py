"""What the benchmark measures: targets (the mock itself, Weir, Weir with plugins, other gateways).

A `Target` is a name plus a `launch` function. Launching starts whatever the target needs
(processes go on the run's `ExitStack`, so they are stopped however the run ends) and returns
a `Running`: the base URLs to send instant and paced traffic to, the headers every request
carries (an Authorization key, say) and the pid whose CPU time and RSS are measured.

Traffic is told apart by model name: `instant-bench` goes to the instant mock and
`paced-bench` to the paced one. Weir routes on those names with its `models:` globs; the
direct target sends each kind straight to its mock's URL. Adding a target is a few lines::

    weir_target("weir+billing-sqlite", plugins=[{"use": "billing", "config": {...}}],
                prepare=cli_key("bench"))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.upstreams import HOST, Upstreams, child_env, free_port, spawn, wait_http

__all__ = [
    "INSTANT_MODEL",
    "PACED_MODEL",
    "Headers",
    "Running",
    "Target",
    "TargetSkipped",
    "cli_key",
    "cpu_seconds",
    "direct_target",
    "idle_cpu_rate",
    "known_targets",
    "launch_all",
    "rss_bytes",
    "weir_config",
    "weir_target",
]

INSTANT_MODEL = "instant-bench"
PACED_MODEL = "paced-bench"

Headers = tuple[tuple[str, str], ...]
Prepare = Callable[[Path], Headers]


@dataclass(frozen=True, slots=True)
class Running:
    """A started target: where to send each kind of traffic, with which headers, and its pid.

    `pid` is the process whose CPU and memory are the target's cost; None for the mock itself.
    """

    name: str
    instant_url: str
    paced_url: str
    headers: Headers = ()
    pid: int | None = None

    def endpoint(self, paced: bool) -> str:
        """The chat-completions URL for instant (False) or paced (True) traffic."""
        return (self.paced_url if paced else self.instant_url) + "/v1/chat/completions"


Launcher = Callable[[Upstreams, Path, ExitStack], Running]


class TargetSkipped(Exception):
    """Raised by a launcher whose target cannot run here (its message says why): the run
    goes on without it and the report says it was skipped."""


@dataclass(frozen=True, slots=True)
class Target:
    """A named thing to benchmark; `launch(upstreams, workdir, stack)` starts it."""

    name: str
    launch: Launcher
    description: str = ""

    @property
    def is_direct(self) -> bool:
        """True for the baseline (requests go straight to the mocks)."""
        return self.name == "direct"


def launch_all(
    targets: Sequence[Target], up: Upstreams, workdir: Path, stack: ExitStack
) -> tuple[list[Running], dict[str, str]]:
    """Launch every target in order: the running ones, and why each skipped one was skipped."""
    running: list[Running] = []
    skipped: dict[str, str] = {}
    for t in targets:
        try:
            running.append(t.launch(up, workdir, stack))
        except TargetSkipped as exc:
            skipped[t.name] = str(exc)
    return running, skipped


def _launch_direct(up: Upstreams, workdir: Path, stack: ExitStack) -> Running:
    return Running("direct", up.instant_url, up.paced_url)


def direct_target() -> Target:
    """The baseline: the mock upstreams themselves, no proxy in between."""
    return Target("direct", _launch_direct, "the mock upstreams, no proxy")


def weir_config(
    up: Upstreams,
    workdir: Path,
    port: int,
    plugins: Sequence[Mapping[str, Any]] = (),
    store: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A proxy.yaml (as data) for Weir in front of the two mock processes.

    The globs do not overlap, so a paced request can never fail over to the instant mock.
    """
    return {
        "server": {"host": HOST, "port": port, "access_log": False, "shutdown_grace": 2.0},
        "store": dict(store) if store is not None else {"backend": "sqlite", "path": str(workdir / "weir.db")},
        "upstreams": [
            {"name": "instant", "type": "mock", "base_url": up.instant_url, "models": ["instant-*"]},
            {"name": "paced", "type": "mock", "base_url": up.paced_url, "models": ["paced-*"]},
        ],
        "plugins": [dict(p) for p in plugins],
    }


def weir_target(
    name: str,
    plugins: Sequence[Mapping[str, Any]] = (),
    store: Mapping[str, Any] | None = None,
    prepare: Prepare | None = None,
    description: str = "",
) -> Target:
    """A `weir serve` subprocess with its own temp proxy.yaml, `plugins` and `store`.

    `prepare(config_path)` runs after the config is written and before the server starts
    (to create users and keys with the CLI, say) and returns headers for every request.
    """

    def launch(up: Upstreams, workdir: Path, stack: ExitStack) -> Running:
        home = workdir / name.replace("+", "_")
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = home / "proxy.yaml"
        config.write_text(yaml.safe_dump(weir_config(up, home, port, plugins, store), sort_keys=False))
        headers = prepare(config) if prepare is not None else ()
        log = home / "weir.log"
        # `python -m proxy serve` is `weir serve` without the console-script wrapper, so the
        # pid we measure is the server itself.
        proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(config)], stack, log, cwd=home)
        url = f"http://{HOST}:{port}"
        wait_http(url + "/healthz", proc, log)
        return Running(name, url, url, headers, proc.pid)

    return Target(name, launch, description or f"weir serve, plugins: {[p.get('use') for p in plugins] or 'none'}")


def cli_key(user: str, quota: int = 10**15) -> Prepare:
    """A `prepare` step: create `user` with `quota` and an unlimited key via the Weir CLI."""

    def prepare(config: Path) -> Headers:
        weir = [sys.executable, "-m", "proxy"]
        env = child_env()
        cfg = ["--config", str(config)]
        subprocess.run(
            [*weir, "user", "add", user, "--quota", str(quota), *cfg],
            check=True,
            env=env,
            timeout=60,
            capture_output=True,
        )
        out = subprocess.run(
            [*weir, "key", "create", user, "--unlimited", "--json", *cfg],
            check=True,
            env=env,
            timeout=60,
            capture_output=True,
        ).stdout
        return (("Authorization", "Bearer " + str(json.loads(out)["key"])),)

    return prepare


def _billing() -> dict[str, Any]:
    """Billing config pricing both bench models, so every request is held and settled."""
    price = {"input": 1, "output": 2}
    config = {"quota_per_usd": 500000, "pricing": {"fallback": "none", "models": {"*-bench": price}}}
    return {"use": "billing", "config": config}


def known_targets() -> dict[str, Target]:
    """Every target the report can run, by name (`--targets a,b,c` picks from these)."""
    # A fresh prefix per run: a fixed one would make the next run's `user add bench` fail.
    # Imported here: bench.litellm_target builds on this module's `Target` and `Running`.
    from bench.litellm_target import litellm_target

    redis = {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "prefix": f"weirbench:{uuid.uuid4().hex[:8]}"}
    return {
        t.name: t
        for t in (
            direct_target(),
            weir_target("weir", description="weir serve, no plugins, SQLite store"),
            weir_target("weir+billing-sqlite", [_billing()], None, cli_key("bench")),
            weir_target("weir+billing-redis", [_billing()], redis, cli_key("bench")),
            litellm_target(),
        )
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def idle_cpu_rate(pid: int, seconds: float) -> float:
    """CPU seconds per wall second process `pid` burns while idle (timers, housekeeping)."""
    c0, w0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - w0)


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
