"""`weir pricing show MODEL` and `weir pricing import-ratios FILE` (added to the `weir` CLI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from plugins.billing.config import billing_config
from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.pricing import ModelPrice, PriceTable, PricingConfig
from plugins.billing.ratios import convert_ratios
from proxy.cli_frame import CLIError, emit
from proxy.host import Config

def _show(args: argparse.Namespace, config: Config) -> int:
    billing = billing_config(config)
    table = PriceTable(PricingConfig.from_plugin_config(billing.pricing_block()), LiteLLMPrices())
    found = table.describe(args.model)
    if found is None:
        raise CLIError(f"model {args.model!r} is not priced (requests for it are refused with model_not_priced)")
    price, source = found
    data = {"model": args.model, "source": source, "price_version": table.version,
            "unit": _unit(price), "prices": price.as_dict()}
    lines = [f"{args.model}: {source} (price version {table.version}), {data['unit']}"]
    lines += [f"  {k:15} {v}" for k, v in price.as_dict().items()]
    emit(args, data, "\n".join(lines))
    return 0


def _unit(price: ModelPrice) -> str:
    if price.is_per_request:
        return "USD per request"
    return "USD per 1M input characters" if price.characters is not None else "USD per 1M tokens"


def _import_ratios(args: argparse.Namespace, config: Config) -> int:
    path = Path(args.file)
    try:
        export: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not JSON: {exc}") from exc
    try:
        result = convert_ratios(export, billing_config(config).quota_per_usd)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    text = yaml.safe_dump(result.config, sort_keys=True, allow_unicode=True)
    text += "".join(f"# warning: {w}\n" for w in result.warnings)
    emit(args, {"config": result.config, "warnings": list(result.warnings)}, text)
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir pricing show|import-ratios`."""
    pricing = sub.add_parser("pricing", help="prices: show what a model costs, import new-api ratios")
    actions = pricing.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", parents=[common], help="the resolved price of MODEL and its source")
    show.add_argument("model")
    commands["pricing show"] = _show
    imp = actions.add_parser("import-ratios", parents=[common],
                             help="convert a new-api/one-api ratio export into a billing config block")
    imp.add_argument("file")
    # It needs only the billing defaults (quota_per_usd): no proxy.yaml is fine.
    imp.set_defaults(config_optional=True)
    commands["pricing import-ratios"] = _import_ratios
