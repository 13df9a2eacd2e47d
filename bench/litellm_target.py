"""The `litellm` benchmark target: LiteLLM's proxy in front of the same mock upstreams.

LiteLLM is never a dependency of Weir: it lives in its own virtualenv, `bench/.litellm-venv`
(gitignored), created by `make bench-litellm-venv` (LiteLLM 1.106.2 with its proxy extras,
uvloop and httptools). When that virtualenv is absent, launching raises `TargetSkipped` and
the report says the target was skipped and why.

Configured as issue 20 asks: one worker (`--num_workers 1`, so uvicorn serves in the process
we measure), no database (`DATABASE_URL` removed from its environment), uvloop (LiteLLM asks
uvicorn for it) and httptools (uvicorn's `auto` HTTP picks it when installed). Each bench
model name maps to `openai/<model>` with `api_base` at its mock, the OpenAI-compatible way.
A random master key per run is the auth (LiteLLM refuses to start without one), sent as a
bearer token the way Weir's billing targets send theirs. `LITELLM_LOG=ERROR` keeps uvicorn's
access log off, as `access_log: false` does for Weir, and the `LITELLM_LOCAL_*` switches keep
it from downloading its cost map and the like at start-up.
"""

from __future__ import annotations

import os
import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from bench.targets import INSTANT_MODEL, PACED_MODEL, Running, Target, TargetSkipped
from bench.upstreams import HOST, Upstreams, free_port, spawn, wait_http

__all__ = ["DEFAULT_VENV", "LITELLM_VERSION", "installed_version", "litellm_config", "litellm_env", "litellm_target"]

DEFAULT_VENV = Path(__file__).resolve().parent / ".litellm-venv"
LITELLM_VERSION = "1.106.2"
# Its first start on a busy machine compiles every module: a minute or more.
START_TIMEOUT = 240.0


def installed_version(venv: Path, package: str) -> str | None:
    """The version of `package` installed in `venv` (from its dist-info), or None."""
    for info in sorted(venv.glob(f"lib/python*/site-packages/{package}-*.dist-info")):
        return info.name[len(package) + 1 : -len(".dist-info")]
    return None


def litellm_config(up: Upstreams, master_key: str) -> dict[str, Any]:
    """LiteLLM's config.yaml (as data): both bench models at their mocks, the master key."""

    def entry(model: str, base_url: str) -> dict[str, Any]:
        params = {"model": f"openai/{model}", "api_base": base_url + "/v1", "api_key": "bench"}
        return {"model_name": model, "litellm_params": params}

    return {
        "model_list": [entry(INSTANT_MODEL, up.instant_url), entry(PACED_MODEL, up.paced_url)],
        "general_settings": {"master_key": master_key},
    }


def litellm_env() -> dict[str, str]:
    """The environment LiteLLM runs in: this one with no database and nothing fetched."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "LITELLM_MASTER_KEY")}
    env.update(
        LITELLM_LOG="ERROR",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOCAL_BLOG_POSTS="True",
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="True",
        PYTHONUNBUFFERED="1",
    )
    return env


def _description(venv: Path) -> str:
    found = installed_version(venv, "litellm")
    if found is None:
        return f"LiteLLM proxy (not installed: `make bench-litellm-venv` creates {venv.name})"
    extras = {name: installed_version(venv, name) for name in ("uvloop", "httptools")}
    libs = ", ".join(f"{name} {version or 'absent'}" for name, version in extras.items())
    return f"LiteLLM {found} proxy, 1 worker, no database ({libs})"


def litellm_target(venv: Path = DEFAULT_VENV) -> Target:
    """The LiteLLM proxy from `venv` as a target; skipped (not failed) when `venv` is absent."""

    def launch(up: Upstreams, workdir: Path, stack: ExitStack) -> Running:
        exe = venv / "bin" / "litellm"
        if not exe.exists():
            raise TargetSkipped(f"no LiteLLM virtualenv at {venv} (create it with `make bench-litellm-venv`)")
        home = workdir / "litellm"
        home.mkdir(parents=True, exist_ok=True)
        key = "sk-" + secrets.token_hex(32)
        config = home / "config.yaml"
        config.write_text(yaml.safe_dump(litellm_config(up, key), sort_keys=False))
        port = free_port()
        argv = [str(exe), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]
        log = home / "litellm.log"
        proc = spawn(argv, stack, log, cwd=home, env=litellm_env())
        url = f"http://{HOST}:{port}"
        wait_http(url + "/health/liveliness", proc, log, timeout=START_TIMEOUT)
        return Running("litellm", url, url, (("Authorization", f"Bearer {key}"),), proc.pid)

    return Target("litellm", launch, _description(venv))
