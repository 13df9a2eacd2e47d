"""`inject_headers`: add configured headers to the upstream request and the client response.

Values are templates: `{request_id}` and `{model}` are filled per request (write `{{` and
`}}` for literal braces); any other placeholder is a config error. `metadata` entries are
copied into `ctx.metadata` for later plugins, and, when `metadata_header` names a header,
also sent upstream in one header as `k=v; k2=v2`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from proxy.plugin import Plugin, RequestContext

__all__ = ["InjectHeadersConfig", "InjectHeadersPlugin"]

PLACEHOLDERS = frozenset({"request_id", "model"})

# Headers that describe the message framing or the connection: a configured value would
# corrupt the exchange rather than annotate it.
_FORBIDDEN = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


@dataclass(frozen=True, slots=True)
class InjectHeadersConfig:
    """The `config:` block of `use: inject_headers`."""

    upstream: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    metadata_header: str | None = None

    def __post_init__(self) -> None:
        for section in ("upstream", "response"):
            for name, value in getattr(self, section).items():
                _check_header_name(f"{section}.{name}", name)
                _check_template(f"{section}.{name}", value)
        for name, value in self.metadata.items():
            if not name or any(c in name for c in "=;\r\n"):
                raise ValueError(f"metadata.{name}: a metadata key may not be empty or contain '=', ';' or a newline")
            _check_template(f"metadata.{name}", value)
        if self.metadata_header is not None:
            _check_header_name("metadata_header", self.metadata_header)


def _check_header_name(where: str, name: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{where}: {name!r} is not a valid header name")
    if name.lower() in _FORBIDDEN:
        raise ValueError(f"{where}: {name!r} is managed by the proxy and cannot be set")


def _check_template(where: str, template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"{where}: unknown placeholder {{{name}}} (known: {known})")


def _clean(text: str) -> str:
    """Drop control characters: a client-chosen model name must not split a header."""
    return "".join(c for c in text if c >= " " and c != "\x7f")


class InjectHeadersPlugin(Plugin):
    """Adds configured headers upstream and to the client response, and request metadata."""

    name: ClassVar[str] = "inject_headers"
    Config: ClassVar[type[InjectHeadersConfig]] = InjectHeadersConfig

    def __init__(self, config: InjectHeadersConfig) -> None:
        super().__init__(config)
        self.config: InjectHeadersConfig = config

    async def on_request(self, ctx: RequestContext) -> None:
        """Fill the templates for this request and add the headers and metadata."""
        values = {"request_id": ctx.request_id, "model": _clean(ctx.model or "")}
        for name, template in self.config.upstream.items():
            ctx.upstream_headers[name] = _fill(template, values)
        for name, template in self.config.response.items():
            ctx.response_headers[name] = _fill(template, values)
        if not self.config.metadata:
            return
        filled = {key: _fill(template, values) for key, template in self.config.metadata.items()}
        ctx.metadata.update(filled)
        if self.config.metadata_header is not None:
            ctx.upstream_headers[self.config.metadata_header] = "; ".join(f"{k}={v}" for k, v in filled.items())


def _fill(template: str, values: Mapping[str, str]) -> str:
    return _clean(template.format_map(values))
