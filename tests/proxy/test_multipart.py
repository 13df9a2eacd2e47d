"""The multipart text-field reader the handler uses for uploads (routing and billing read
`model`, `n` and `prompt` from it), checked against bodies real clients build."""

from __future__ import annotations

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.multipart import MAX_FIELDS, MAX_VALUE, boundary_of, form_fields


def encoded(form: aiohttp.FormData) -> tuple[str, bytes]:
    """The Content-Type and bytes aiohttp (as the openai SDK's httpx would) sends."""
    payload = form()
    chunks: list[bytes] = []

    class Sink:
        async def write(self, data: bytes) -> None:
            chunks.append(bytes(data))

    import asyncio

    asyncio.run(payload.write(Sink()))  # type: ignore[arg-type]
    return payload.content_type, b"".join(chunks)


def test_text_fields_are_read_and_files_skipped() -> None:
    form = aiohttp.FormData()
    form.add_field("model", "gpt-image-1")
    form.add_field("prompt", "a cat in a hat — ünïcode")
    form.add_field("image", b"\x89PNG" + b"--not a boundary\r\n" * 50, filename="cat.png", content_type="image/png")
    form.add_field("n", "2")
    ctype, body = encoded(form)
    assert form_fields(ctype, body) == {"model": "gpt-image-1", "prompt": "a cat in a hat — ünïcode", "n": "2"}


def test_quoted_and_odd_headers() -> None:
    body = (
        b'--b0\r\nCONTENT-DISPOSITION: form-data; name="we;ird \\"name\\""\r\n\r\nv1\r\n'
        b"--b0\r\nContent-Disposition: form-data; name=model\r\nContent-Type: text/plain\r\n\r\nm-1\r\n"
        b'--b0\r\nContent-Disposition: form-data; name="model"\r\n\r\nsecond wins nothing\r\n'
        b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''x.wav\r\n\r\nRIFF\r\n"
        b"--b0--\r\n"
    )
    fields = form_fields('multipart/form-data; charset=utf-8; boundary="b0"', body)
    assert fields == {'we;ird "name"': "v1", "model": "m-1"}


def test_not_multipart_or_broken_bodies() -> None:
    assert form_fields("application/json", b"{}") is None
    assert form_fields("multipart/form-data", b"") is None  # no boundary
    assert boundary_of("multipart/form-data; boundary=" + "x" * 71) is None
    assert form_fields("multipart/form-data; boundary=zz", b"garbage") == {}
    # A part whose end never comes yields nothing rather than a huge value.
    assert (
        form_fields("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\nxx")
        == {}
    )


def test_limits_on_field_count_and_size() -> None:
    many = b"".join(b"--k\r\nContent-Disposition: form-data; name=f%d\r\n\r\nv\r\n" % i for i in range(200)) + b"--k--"
    assert len(form_fields("multipart/form-data; boundary=k", many) or {}) == MAX_FIELDS
    big = b"--k\r\nContent-Disposition: form-data; name=big\r\n\r\n" + b"x" * (MAX_VALUE + 1) + b"\r\n--k--"
    assert form_fields("multipart/form-data; boundary=k", big) == {}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.text(min_size=1, max_size=20))
def test_arbitrary_bytes_never_raise(body: bytes, boundary: str) -> None:
    result = form_fields(f"multipart/form-data; boundary={boundary}", body)
    assert result is None or isinstance(result, dict)
