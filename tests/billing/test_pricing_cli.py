"""`weir pricing show` and `weir pricing import-ratios` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def weir(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_pricing_show_config_glob_and_litellm(tmp_path: Path) -> None:
    cfg = str(ROOT / "proxy.yaml")
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
    export.write_text(json.dumps({
        "model_ratio": json.dumps({"gpt-4o": 1.25}), "completion_ratio": {"gpt-4o": 4},
        "model_price": {"dall-e-3": 0.04}, "group_ratio": {"vip": 0.8},
    }))
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
