"""`weir pricing show` and `weir pricing import-ratios` through the real CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from plugins.billing.config import BillingConfig
from plugins.billing.prices.book import PriceBook
from plugins.billing.store.sqlite.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[3]


def weir(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_pricing_show_config_glob_and_litellm(tmp_path: Path) -> None:
    cfg = str(tmp_path / "proxy.yaml")  # beside it, its store: nothing is written in the repository
    shutil.copy(ROOT / "proxy.yaml", cfg)
    res = weir("pricing", "show", "mock-gpt", "--config", cfg, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["source"] == "config-glob:mock-gpt*" and data["prices"]["input"] == "0.15"
    assert data["prices"]["cache_write"] == "0.1875"  # 1.25 × input, never 0
    res = weir("pricing", "show", "gpt-4o-mini", "--config", cfg, "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert data["source"].startswith("litellm:") and data["prices"]["input"] == "0.15"
    res = weir("pricing", "show", "no-such-model-xyz", "--config", cfg, cwd=tmp_path)
    assert res.returncode == 1 and "not priced" in res.stderr
    res = weir("pricing", "show", "tts-1", "--config", cfg, "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert (data["unit"], data["prices"]) == ("USD per 1M input characters", {"characters": "15"})


def test_import_ratios_round_trips_into_a_config(tmp_path: Path) -> None:
    export = tmp_path / "ratios.json"
    export.write_text(
        json.dumps(
            {
                "model_ratio": json.dumps({"gpt-4o": 1.25}),
                "completion_ratio": {"gpt-4o": 4},
                "model_price": {"dall-e-3": 0.04},
                "group_ratio": {"vip": 0.8},
            }
        )
    )
    res = weir("pricing", "import-ratios", str(export), "--config", str(ROOT / "proxy.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    block = yaml.safe_load(res.stdout)
    assert block["pricing"]["models"]["gpt-4o"] == {"input": 2.5, "output": 10}
    assert block["pricing"]["models"]["dall-e-3"] == {"per_request": 0.04}
    assert block["groups"] == {"vip": 0.8}
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    res = weir("pricing", "import-ratios", str(bad), "--config", str(ROOT / "proxy.yaml"), cwd=tmp_path)
    assert res.returncode == 1 and "not JSON" in res.stderr


CONFIG = """
store: {backend: sqlite, path: ./weir.db}
plugins:
  - use: billing
    config:
      pricing:
        models:
          gpt-4o: {input: 2.5, output: 10}
          dall-e-3: {per_request: 0.04}
"""


def _edit(tmp_path: Path, models: dict[str, object]) -> None:
    """What a running proxy does: seed proxy.yaml's prices as version 1, then save an edit."""

    async def run() -> None:
        store = SQLiteStore(str(tmp_path / "weir.db"))
        await store.open()
        try:
            book = PriceBook(
                BillingConfig(pricing=yaml.safe_load(CONFIG)["plugins"][0]["config"]["pricing"]).pricing_block(), None
            )
            await book.start(store)
            await book.save(store, await store.price_head(), models, "editor", "dearer gpt-4o")
        finally:
            await store.close()

    asyncio.run(run())


def test_history_diff_and_rollback(tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(CONFIG)
    res = weir("pricing", "history", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0 and "no price versions yet" in res.stdout, res.stderr
    res = weir("pricing", "show", "--config", str(cfg), "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["version"] == 0  # proxy.yaml's, until a proxy saves it

    _edit(tmp_path, {"gpt-4o": {"input": "3", "output": "12"}, "dall-e-3": {"per_request": "0.04"}})
    res = weir("pricing", "history", "--config", str(cfg), "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert data["head"] == 2 and [(v["version"], v["source"]) for v in data["versions"]] == [
        (2, "editor"),
        (1, "proxy.yaml"),
    ]
    assert data["versions"][0]["models"]["gpt-4o"] == {"input": "3", "output": "12"}
    res = weir("pricing", "diff", "1", "2", "--config", str(cfg), cwd=tmp_path)
    assert res.stdout.strip() == "~ gpt-4o: input 2.5 → 3, output 10 → 12", res.stderr
    res = weir("pricing", "show", "gpt-4o", "--config", str(cfg), "--json", cwd=tmp_path)
    shown = json.loads(res.stdout)
    assert (shown["version"], shown["prices"]["input"], shown["price_version"][:3]) == (2, "3", "v2:")

    res = weir("pricing", "rollback", "1", "--config", str(cfg), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    back = json.loads(res.stdout)
    assert (back["version"], back["base"], back["source"], back["note"]) == (3, 2, "rollback", "rollback to version 1")
    assert back["models"]["gpt-4o"] == {"input": "2.5", "output": "10"}
    res = weir("pricing", "diff", "1", "3", "--config", str(cfg), cwd=tmp_path)
    assert "same prices" in res.stdout
    res = weir("pricing", "rollback", "9", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 1 and "no price version 9" in res.stderr
