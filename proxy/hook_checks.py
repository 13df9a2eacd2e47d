"""What the pipeline checks in what hooks hand back: headers plugins set on the context,
and a `Reject` (split out of `proxy.pipeline`)."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.context import RequestContext
from proxy.plugin import Reject

__all__ = ["header_problem", "reject_problem"]


def _bad_header(headers: CIMultiDict[str], where: str) -> str | None:
    for name, value in headers.items():
        if not isinstance(value, str):
            return f"ctx.{where}[{name!r}] is a {type(value).__name__}, not a str"
        if "\n" in value or "\r" in value or "\x00" in value or "\n" in name or "\r" in name:
            return f"ctx.{where}[{name!r}] contains a line break or NUL"
    return None


def header_problem(ctx: RequestContext) -> str | None:
    """Why the headers plugins set on `ctx` cannot be sent, or None (the usual case, cheaply)."""
    if ctx.upstream_headers:
        problem = _bad_header(ctx.upstream_headers, "upstream_headers")
        if problem is not None:
            return problem
    if ctx.response_headers:
        return _bad_header(ctx.response_headers, "response_headers")
    return None


def reject_problem(exc: Reject) -> str | None:
    """Why a `Reject` cannot be answered as it is (a status that is not an error, a header
    that cannot be sent), or None."""
    if not (type(exc.status) is int and 400 <= exc.status <= 599):
        return f"Reject status must be an int from 400 to 599, got {exc.status!r}"
    if not (isinstance(exc.code, str) and isinstance(exc.message, str)):
        return "Reject code and message must be strings"
    for name, value in exc.headers.items():
        if not (isinstance(name, str) and isinstance(value, str)) or "\n" in name + value or "\r" in name + value:
            return f"Reject header {name!r} must be a str without line breaks"
    return None
