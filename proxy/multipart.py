"""The text fields of a `multipart/form-data` body (RFC 7578), without copying its files.

Weir needs a few small fields of an upload (`model` to route, `n` and `prompt` to bill)
and relays the body itself unchanged. So this reader only finds part boundaries
(`bytes.find`, which runs at memchr speed over file contents), reads each part's headers,
and keeps the value of a part that is not a file and is short. Anything malformed simply
yields fewer fields: the upstream, which parses the body for real, answers the client.
"""

from __future__ import annotations

__all__ = ["MAX_FIELDS", "MAX_VALUE", "boundary_of", "form_fields"]

#: Fields kept at most (a body of ten thousand tiny fields must not cost a dict that size).
MAX_FIELDS = 64
#: Longer text values are skipped (a prompt is at most a few thousand characters).
MAX_VALUE = 64 * 1024
_MAX_HEADERS = 8 * 1024


def boundary_of(content_type: str) -> str | None:
    """The `boundary` parameter of a multipart/form-data Content-Type, or None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            # RFC 2046 §5.1.1: 1 to 70 characters.
            return value if 0 < len(value) <= 70 else None
    return None


def form_fields(content_type: str, body: bytes) -> dict[str, str] | None:
    """The short text fields of `body` by name (the first of a repeated name wins), or
    None when `content_type` is not multipart/form-data with a boundary."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    fields: dict[str, str] = {}
    pos = body.find(delimiter)
    while pos >= 0 and len(fields) < MAX_FIELDS:
        start = pos + len(delimiter)
        if body[start : start + 2] == b"--":
            break  # the close delimiter
        head_end = body.find(b"\r\n\r\n", start, start + _MAX_HEADERS)
        end = body.find(b"\r\n" + delimiter, start)
        if head_end < 0 or end < 0 or head_end > end:
            break
        name, is_file = _disposition(body[start:head_end])
        value_start = head_end + 4
        if name is not None and not is_file and name not in fields and end - value_start <= MAX_VALUE:
            fields[name] = body[value_start:end].decode("utf-8", "replace")
        pos = end + 2
    return fields


def _disposition(head: bytes) -> tuple[str | None, bool]:
    """The part's field name and whether it is a file, from its Content-Disposition."""
    for line in head.decode("utf-8", "replace").split("\r\n"):
        header, _, value = line.partition(":")
        if header.strip().lower() != "content-disposition":
            continue
        name: str | None = None
        is_file = False
        for param in _params(value):
            key, _, raw = param.partition("=")
            key = key.strip().lower()
            if key == "name":
                name = _unquote(raw.strip())
            elif key in ("filename", "filename*"):
                is_file = True
        return name, is_file
    return None, False


def _params(value: str) -> list[str]:
    """Split a header value on `;`, except inside quoted strings."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
        return text.replace('\\"', '"').replace("\\\\", "\\")
    return text
