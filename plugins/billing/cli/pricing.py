"""`weir pricing show [MODEL] | history | diff A B | rollback N | import-ratios FILE`.

The prices billing charges are the store's newest price version (plugins.billing.prices);
these commands read and append versions in the configured store, so they agree with every
running instance. Until a proxy first starts on the store, proxy.yaml's prices are shown
(as "version 0": the proxy saves them as version 1).
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from plugins.billing.accounts.values import iso
from plugins.billing.cli.accounts import with_store
from plugins.billing.config import billing_config
from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.prices import document as doc
from plugins.billing.prices.book import Current, PriceBook
from plugins.billing.pricing import ModelPrice
from plugins.billing.ratios import convert_ratios
from plugins.billing.store.base import PriceConflict, PriceVersion, Store
from proxy.cli_frame import CLIError, emit
from proxy.host import Config, ConfigError


def _book(config: Config) -> PriceBook:
    return PriceBook(billing_config(config).pricing_block(), LiteLLMPrices())


async def _current(book: PriceBook, store: Store) -> Current:
    head = await store.get_price_version()
    if head is None:
        return book.current
    try:
        return book.adopt(head)
    except ConfigError as exc:
        raise CLIError(f"price version {head.number} in the store cannot be used: {exc}") from None


def _version_line(v: PriceVersion, head: int) -> str:
    mark = "*" if v.number == head else " "
    models = len(json.loads(v.document))
    note = f"  {v.note}" if v.note else ""
    return f"{mark} {v.number:>4}  {iso(v.created_at)}  {v.source:<10}  {v.digest}  {models:>4} models{note}"


def _version_dict(v: PriceVersion) -> dict[str, Any]:
    return {
        "version": v.number,
        "base": v.base,
        "created_at": iso(v.created_at),
        "source": v.source,
        "note": v.note,
        "digest": v.digest,
        "models": json.loads(v.document),
    }


def _show(args: argparse.Namespace, config: Config) -> int:
    book = _book(config)
    cur = with_store(config, lambda store: _current(book, store))
    if args.model is None:
        return _show_all(args, cur)
    found = cur.table.describe(args.model)
    if found is None:
        raise CLIError(f"model {args.model!r} is not priced (requests for it are refused with model_not_priced)")
    price, source = found
    data = {
        "model": args.model,
        "source": source,
        "version": cur.number,
        "price_version": cur.label,
        "unit": _unit(price),
        "prices": price.as_dict(),
    }
    lines = [f"{args.model}: {source} (price version {cur.number}, {cur.label}), {data['unit']}"]
    lines += [f"  {k:15} {v}" for k, v in price.as_dict().items()]
    emit(args, data, "\n".join(lines))
    return 0


def _unit(price: ModelPrice) -> str:
    if price.is_task:
        return "USD per task (per_request) and per second of output (per_second); tokens per 1M"
    if price.is_per_request:
        return "USD per request"
    return "USD per 1M input characters" if price.characters is not None else "USD per 1M tokens"


def _show_all(args: argparse.Namespace, cur: Current) -> int:
    data = {"version": cur.number, "price_version": cur.label, "models": cur.models}
    head = f"price version {cur.number} ({cur.label})" if cur.number else "proxy.yaml (not saved in the store yet)"
    lines = [f"{head}: {len(cur.models)} models, USD per 1M tokens or per request"]
    lines += [f"  {name:30} {', '.join(f'{k} {v}' for k, v in fields.items())}" for name, fields in cur.models.items()]
    emit(args, data, "\n".join(lines))
    return 0


def _history(args: argparse.Namespace, config: Config) -> int:
    async def work(store: Store) -> list[PriceVersion]:
        return await store.list_price_versions(args.limit)

    versions = with_store(config, work)
    head = versions[0].number if versions else 0
    data = {"head": head, "versions": [_version_dict(v) for v in versions]}
    text = (
        "\n".join(_version_line(v, head) for v in versions)
        or "no price versions yet (the proxy saves proxy.yaml's prices as version 1 when it starts)"
    )
    emit(args, data, text)
    return 0


def _diff(args: argparse.Namespace, config: Config) -> int:
    async def work(store: Store) -> tuple[PriceVersion, PriceVersion]:
        a, b = await store.get_price_version(args.a), await store.get_price_version(args.b)
        for number, found in ((args.a, a), (args.b, b)):
            if found is None:
                raise CLIError(f"there is no price version {number} (see `weir pricing history`)")
        assert a is not None and b is not None
        return a, b

    a, b = with_store(config, work)
    changes = doc.diff(doc.loads(a.document), doc.loads(b.document))
    data = {"from": a.number, "to": b.number, "changes": [c.as_dict() for c in changes]}
    text = "\n".join(c.describe() for c in changes) or f"versions {a.number} and {b.number} have the same prices"
    emit(args, data, text)
    return 0


def _rollback(args: argparse.Namespace, config: Config) -> int:
    book = _book(config)

    async def work(store: Store) -> tuple[PriceVersion | PriceConflict, int]:
        target = await store.get_price_version(args.number)
        if target is None:
            raise CLIError(f"there is no price version {args.number} (see `weir pricing history`)")
        head = await store.price_head()
        note = args.note or f"rollback to version {target.number}"
        return await book.save(store, head, doc.loads(target.document), "rollback", note), head

    saved, head = with_store(config, work)
    if isinstance(saved, PriceConflict):
        raise CLIError(f"version {saved.head} was saved meanwhile (based on {head}); run the rollback again")
    emit(
        args,
        _version_dict(saved),
        f"saved price version {saved.number} (the prices of version {args.number}); "
        f"running instances charge it within {billing_config(config).price_poll_every:g} s",
    )
    return 0


def _import_ratios(args: argparse.Namespace, config: Config) -> int:
    path = Path(args.file)
    try:
        export: Any = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
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
    """Add `weir pricing show|history|diff|rollback|import-ratios`."""
    pricing = sub.add_parser("pricing", help="prices: show, history, diff, rollback, import new-api ratios")
    actions = pricing.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", parents=[common], help="the current prices, or the resolved price of MODEL")
    show.add_argument("model", nargs="?")
    commands["pricing show"] = _show
    history = actions.add_parser("history", parents=[common], help="the price versions, newest first")
    history.add_argument("--limit", type=int, default=20)
    commands["pricing history"] = _history
    diff = actions.add_parser("diff", parents=[common], help="what changed from version A to version B")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    commands["pricing diff"] = _diff
    rollback = actions.add_parser(
        "rollback", parents=[common], help="save the prices of version N as the newest version"
    )
    rollback.add_argument("number", type=int)
    rollback.add_argument("--note", default="")
    commands["pricing rollback"] = _rollback
    imp = actions.add_parser(
        "import-ratios", parents=[common], help="convert a new-api/one-api ratio export into a billing config block"
    )
    imp.add_argument("file")
    # It needs only the billing defaults (quota_per_usd): no proxy.yaml is fine.
    imp.set_defaults(config_optional=True)
    commands["pricing import-ratios"] = _import_ratios
