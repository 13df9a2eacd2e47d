"""The price editor's draft: the models block being edited, before it is saved.

A draft is carried by the editor's form (as JSON) from one step to the next, so an edit
survives a reload on another instance and nothing is kept per session. It may hold what
cannot be saved yet (a model priced both ways, a price that is not a number): each model
is checked on its own, so the page can show the good ones and name the bad ones.
Everything stays text: a price typed in a form is never turned into a float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from plugins.billing.prices import document as doc
from plugins.billing.pricing import ModelPrice
from proxy.host import ConfigError

__all__ = ["Draft", "TOKEN_FIELDS", "adopt", "edit", "load", "split"]

#: model → field → the text typed (not yet validated).
Draft = dict[str, dict[str, str]]
TOKEN_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "audio_input",
    "audio_output",
    "image_input",
)
#: The biggest draft the editor accepts (models).
MAX_MODELS = 5000


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value).strip()


def load(raw: str | Mapping[str, Any]) -> Draft:
    """A draft from the form's JSON (or an already parsed mapping). Raises ValueError when
    it is not a mapping of model → mapping of field → scalar."""
    data = json.loads(raw, parse_float=Decimal) if isinstance(raw, str) else raw
    if not isinstance(data, Mapping):
        raise ValueError("the prices must be a JSON object of model → prices")
    if len(data) > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models")
    out: Draft = {}
    for name, spec in data.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f'{name}: expected an object of prices, e.g. {{"input": "0.15", "output": "0.6"}}')
        if any(isinstance(v, (Mapping, list)) for v in spec.values()):
            raise ValueError(f"{name}: every price must be a number")
        out[str(name)] = {str(k): _text(v) for k, v in spec.items()}
    return out


def dumps(draft: Draft) -> str:
    """The draft as the form carries it."""
    return json.dumps(draft, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def split(draft: Draft) -> tuple[doc.Models, dict[str, str]]:
    """The models that validate (canonical), and for each other one what is wrong with it."""
    good: doc.Models = {}
    bad: dict[str, str] = {}
    for name, spec in draft.items():
        try:
            good.update(doc.normalise({name: spec}))
        except ConfigError as exc:
            bad[name] = str(exc)
    return good, bad


def edit(draft: Draft, model: str, mode: Literal["tokens", "request"], fields: Mapping[str, str]) -> Draft:
    """`draft` with `model` priced per token or per request. Switching mode clears the
    other mode's fields; an empty field is left out (token prices then take their default)."""
    model = model.strip()
    if not model:
        raise ValueError("give the model a name (an exact name, or a glob such as acme-*)")
    keep = ("per_request",) if mode == "request" else TOKEN_FIELDS
    chosen = {f: fields[f].strip() for f in keep if fields.get(f, "").strip()}
    return {**draft, model: chosen}


def adopt(draft: Draft, model: str, reference: ModelPrice) -> Draft:
    """`draft` with `model` priced at its reference price (every field written out)."""
    return {**draft, model: dict(reference.as_dict())}


def remove(draft: Draft, model: str) -> Draft:
    """`draft` without `model` (it then falls to globs, the fallback, or unpriced)."""
    return {k: v for k, v in draft.items() if k != model}
