"""The incremental SSE parser: WHATWG framing, byte-exact raw, flush, overflow, fuzzing.

Besides hand-written cases, a deliberately naive reference reader (decode the whole stream,
walk it one character at a time, follow the spec's steps literally) is the oracle the
property tests compare the parser against.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.context import SSEEvent
from proxy.sse import DEFAULT_MAX_EVENT_BYTES, SSEItem, SSEOverflow, SSEParser

Fields = tuple[str, str | None, str | None, int | None]


# --- helpers -------------------------------------------------------------------------


def feed_all(reads: Sequence[bytes], parser: SSEParser | None = None) -> list[SSEItem]:
    """Feed every read, then flush; return all items in order."""
    parser = parser or SSEParser()
    items: list[SSEItem] = []
    for read in reads:
        items.extend(parser.feed(read))
    items.extend(parser.flush())
    return items


def events_of(items: Sequence[SSEItem]) -> list[Fields]:
    """The (data, event, id, retry) of each emitted event, ignoring pass-through bytes."""
    return [(i.data, i.event, i.id, i.retry) for i in items if isinstance(i, SSEEvent)]


def raw_of(items: Sequence[SSEItem]) -> bytes:
    """The bytes the relay would forward for these items, unchanged."""
    return b"".join(i.raw if isinstance(i, SSEEvent) else i for i in items)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut `data` at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def reference(stream: bytes) -> list[Fields]:
    """The spec's event stream interpretation, written for clarity, not speed."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "\r\n":
            lines.append("".join(current))
            current = []
            if ch == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
        else:
            current.append(ch)
        i += 1
    # `current` is an unterminated last line: discarded at EOF, as is any event in progress.
    events: list[Fields] = []
    data, event, block_id, retry = "", "", None, None
    for line in lines:
        if line == "":
            if data:
                events.append((data[:-1], event or None, block_id, retry))
            data, event, block_id, retry = "", "", None, None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if ":" in line and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            block_id = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            if len(value) <= 64:  # the parser's documented cap
                retry = int(value)
    return events


def parse(stream: bytes) -> list[SSEItem]:
    """Parse a stream fed in one piece."""
    return feed_all([stream])


# --- framing ---------------------------------------------------------------------------


def test_single_data_line_events_have_exact_raw_and_lazy_json() -> None:
    items = parse(b'data: {"a": 1}\n\ndata: [DONE]\n\n')
    assert events_of(items) == [('{"a": 1}', None, None, None), ("[DONE]", None, None, None)]
    first, done = items
    assert isinstance(first, SSEEvent) and isinstance(done, SSEEvent)
    assert first.raw == b'data: {"a": 1}\n\n'
    assert first.json == {"a": 1}
    assert done.json is None  # the [DONE] sentinel is not JSON


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_frames_the_same_events(eol: bytes) -> None:
    lines = [b"event: add", b"data: YHOO", b"data: +2", b"id: 7", b"", b": ping", b""]
    lines += [b"data: second", b""]
    stream = b"".join(line + eol for line in lines)
    items = parse(stream)
    assert events_of(items) == [("YHOO\n+2", "add", "7", None), ("second", None, None, None)]
    assert [type(i) for i in items] == [SSEEvent, bytes, SSEEvent]
    assert items[1] == b": ping" + eol + eol
    assert raw_of(items) == stream


def test_mixed_line_endings_in_one_event() -> None:
    stream = b"data: a\rdata: b\r\ndata: c\n\r\n"
    (ev,) = parse(stream)
    assert isinstance(ev, SSEEvent)
    assert ev.data == "a\nb\nc"
    assert ev.raw == stream


def test_cr_then_lf_in_two_reads_is_one_line_ending() -> None:
    # Read as CR + LF it is one line end, so the block is still open after "\r\n".
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    items = parser.feed(b"\n\r\n")
    assert events_of(items) == [("a\nb", None, None, None)]
    assert parser.flush() == []


def test_buffered_cr_is_a_line_end_when_later_reads_have_none() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\rdata: b") == []
    assert events_of(parser.feed(b"\n\n")) == [("a\nb", None, None, None)]


def test_event_ended_by_cr_is_emitted_without_waiting_for_a_possible_lf() -> None:
    parser = SSEParser()
    first = parser.feed(b"data: a\r\n\r")
    assert events_of(first) == [("a", None, None, None)]
    second = parser.feed(b"\ndata: b\r\n\r\n")
    assert events_of(second) == [("b", None, None, None)]
    assert raw_of(first + second) == b"data: a\r\n\r\ndata: b\r\n\r\n"


def test_spec_example_ids_and_spaces() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
    stream += b"data:  third event\n\n"
    parser = SSEParser()
    items = feed_all([stream], parser)
    assert events_of(items) == [
        ("first event", None, "1", None),
        ("second event", None, "", None),  # a bare `id` resets the last event id
        (" third event", None, None, None),  # only one leading space is stripped
    ]
    assert parser.last_event_id == ""


def test_spec_example_data_without_colon() -> None:
    # "data" alone is the field with an empty value; the unterminated last block is dropped.
    items = parse(b"data\n\ndata\ndata\n\ndata:")
    assert events_of(items) == [("", None, None, None), ("\n", None, None, None)]
    assert items[-1] == b"data:"


def test_no_space_after_colon_and_colons_in_value() -> None:
    assert events_of(parse(b"data:x\n\ndata: a:b: c\n\n")) == [
        ("x", None, None, None),
        ("a:b: c", None, None, None),
    ]


def test_empty_data_line_dispatches_an_empty_event_per_spec() -> None:
    (ev,) = parse(b"data:\n\n")
    assert isinstance(ev, SSEEvent)
    assert ev.data == ""
    assert events_of(parse(b"data: \ndata:\n\n")) == [("\n", None, None, None)]


def test_comment_inside_event_and_unknown_fields_are_ignored() -> None:
    assert events_of(parse(b"data: a\n: note\nfoo: bar\ndata: b\n\n")) == [("a\nb", None, None, None)]


@pytest.mark.parametrize("block", [b": ping\n\n", b"id: 5\n\n", b"retry: 3000\n\n", b"event: x\n\n", b"foo: 1\n\n"])
def test_blocks_that_dispatch_nothing_are_passed_through_as_bytes(block: bytes) -> None:
    items = SSEParser().feed(block + b"data: after\n\n")
    assert items[0] == block
    assert events_of(items) == [("after", None, None, None)]
    assert raw_of(items) == block + b"data: after\n\n"


def test_extra_blank_lines_dispatch_nothing_and_are_relayed() -> None:
    stream = b"data: a\n\n\n\n\ndata: b\r\n\r\n\r\n"
    items = parse(stream)
    assert events_of(items) == [("a", None, None, None), ("b", None, None, None)]
    assert raw_of(items) == stream


def test_event_field_names_the_event_and_empty_name_means_default() -> None:
    stream = b"event: message_start\ndata: {}\n\nevent\ndata: y\n\nevent:\ndata: z\n\n"
    assert events_of(parse(stream)) == [
        ("{}", "message_start", None, None),
        ("y", None, None, None),
        ("z", None, None, None),
    ]


def test_id_persists_as_last_event_id_but_event_id_is_its_own_block() -> None:
    parser = SSEParser()
    items = feed_all([b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\nid: x\0y\ndata: c\n\n"], parser)
    assert events_of(items) == [
        ("a", None, "1", None),
        ("b", None, None, None),
        ("c", None, None, None),  # an id containing NUL is ignored
    ]
    assert items[2] == b"id: 2\n\n"
    assert parser.last_event_id == "2"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 1500", 1500),
        (b"retry:0", 0),
        (b"retry: 15s", None),
        (b"retry: -1", None),
        (b"retry:", None),
        (b"retry:  15", None),  # a second space is part of the value: not all digits
        ("retry: \u0661\u0662".encode(), None),  # Arabic-Indic digits are not ASCII
        (b"retry: " + b"9" * 65, None),
    ],
)
def test_retry_only_when_all_ascii_digits(line: bytes, expected: int | None) -> None:
    parser = SSEParser()
    (ev,) = feed_all([line + b"\ndata: x\n\n"], parser)
    assert isinstance(ev, SSEEvent)
    assert ev.retry == expected
    assert parser.retry == expected


def test_bom_at_stream_start_is_skipped_but_kept_in_raw() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    items = parse(stream)
    # The second BOM is not at the stream start: it is part of the field name "\ufeffdata".
    assert events_of(items) == [("a", None, None, None)]
    assert raw_of(items) == stream


def test_bom_after_the_first_event_in_a_later_read_is_not_skipped() -> None:
    parser = SSEParser()
    assert events_of(parser.feed(b"data: a\n\n")) == [("a", None, None, None)]
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [b"\xef\xbb\xbfdata: b\n\n"]


def test_bom_split_across_reads() -> None:
    items = feed_all([b"\xef", b"\xbb", b"\xbfdata: a\r\n\r\n"])
    assert events_of(items) == [("a", None, None, None)]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    items = parse(b"data: \xff\xfeok\xe2\x82\n\nevent: \xc3\ndata: x\n\n")
    assert events_of(items) == [
        ("\ufffd\ufffdok\ufffd", None, None, None),
        ("x", "\ufffd", None, None),
    ]


def test_bytes_like_input_gives_bytes_raw() -> None:
    parser = SSEParser()
    items = parser.feed(bytearray(b"data: a\n\n")) + parser.feed(memoryview(b"data: b\n\n"))
    assert [type(i.raw) for i in items if isinstance(i, SSEEvent)] == [bytes, bytes]
    assert parser.feed(b"") == []


# --- reads, pending and flush ----------------------------------------------------------

SAMPLE = (
    b"\xef\xbb\xbf: hello\r\n\r\n"
    b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b"event: content_block_delta\r\nid: 42\r\nretry: 10\r\ndata: line1\r\ndata:line2\r\n\r\n"
    b"data: cr only\rdata: second\r\r"
    b"id\n\n"
    b"data: \xc3\xa9t\xc3\xa9 \xf0\x9f\x8c\x8a\n\n"
    b"data: [DONE]\n\n"
)


SAMPLE_EVENTS: list[Fields] = [
    ('{"choices":[{"delta":{"content":"Hi"}}]}', None, None, None),
    ("line1\nline2", "content_block_delta", "42", 10),
    ("cr only\nsecond", None, None, None),
    ("\u00e9t\u00e9 \U0001f30a", None, None, None),
    ("[DONE]", None, None, None),
]


def test_feeding_one_byte_at_a_time_matches_one_piece() -> None:
    whole = parse(SAMPLE)
    assert events_of(whole) == SAMPLE_EVENTS
    bytewise = feed_all([SAMPLE[i : i + 1] for i in range(len(SAMPLE))])
    assert events_of(bytewise) == events_of(whole) == reference(SAMPLE)
    assert raw_of(bytewise) == SAMPLE


def test_every_two_way_split_matches_one_piece() -> None:
    expected = events_of(parse(SAMPLE))
    for cut in range(len(SAMPLE) + 1):
        items = feed_all([SAMPLE[:cut], SAMPLE[cut:]])
        assert events_of(items) == expected, cut
        assert raw_of(items) == SAMPLE, cut


def test_pending_counts_buffered_bytes() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: par") != []
    assert parser.pending == len(b"data: par")
    assert parser.feed(b"tial\n") == []
    assert parser.pending == len(b"data: partial\n")
    assert events_of(parser.feed(b"\n")) == [("partial", None, None, None)]
    assert parser.pending == 0


def test_flush_returns_an_unterminated_event_as_bytes() -> None:
    parser = SSEParser()
    assert events_of(parser.feed(b"data: done\n\ndata: cut off\n")) == [("done", None, None, None)]
    assert parser.flush() == [b"data: cut off\n"]
    assert parser.pending == 0
    assert parser.flush() == []
    ended = SSEParser()
    assert events_of(ended.feed(b"data: a\r\n\r\n")) == [("a", None, None, None)]
    assert ended.flush() == []


# --- overflow --------------------------------------------------------------------------


def test_overflow_is_a_value_error_with_a_4_mib_default() -> None:
    assert issubclass(SSEOverflow, ValueError)
    assert DEFAULT_MAX_EVENT_BYTES == 4 * 1024 * 1024
    with pytest.raises(ValueError):
        SSEParser(max_event_bytes=0)


def test_an_event_growing_over_the_limit_across_reads_raises() -> None:
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 80) == []
    with pytest.raises(SSEOverflow):
        parser.feed(b"y" * 30)
    assert parser.pending == 86  # the failing read was not taken in


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_an_unfinished_event_over_the_limit_raises_at_once(eol: bytes) -> None:
    parser = SSEParser(max_event_bytes=100)
    with pytest.raises(SSEOverflow):
        parser.feed(b"data: ok" + eol + eol + b"data: " + b"x" * 100)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_complete_event_over_the_limit_in_one_read_raises(eol: bytes) -> None:
    parser = SSEParser(max_event_bytes=100)
    with pytest.raises(SSEOverflow):
        parser.feed(b"data: ok" + eol + eol + b"data: " + b"x" * 100 + eol + eol)


def test_an_event_of_exactly_the_limit_passes() -> None:
    event = b"data: " + b"x" * 92 + b"\n\n"
    assert len(event) == 100
    parser = SSEParser(max_event_bytes=100)
    assert events_of(parser.feed(event[:50]) + parser.feed(event[50:])) == [("x" * 92, None, None, None)]
    three = SSEParser(max_event_bytes=100).feed(event * 3)
    assert events_of(three) == [("x" * 92, None, None, None)] * 3


def test_a_long_event_in_many_small_reads_is_assembled_once() -> None:
    body = b"a" * 200_000
    reads = [b"data: "] + [body[i : i + 1000] for i in range(0, len(body), 1000)] + [b"\n\n"]
    (ev,) = feed_all(reads)
    assert isinstance(ev, SSEEvent)
    assert ev.data == body.decode()


# --- properties ------------------------------------------------------------------------

_VALUE = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]))
_EOL = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def _valid_stream(draw: st.DrawFn) -> tuple[bytes, list[Fields]]:
    """A stream of well-formed events with random line endings, and the events it holds."""
    expected: list[Fields] = []
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(":" + draw(_VALUE))
        event = draw(st.none() | _VALUE)
        event_id = draw(st.none() | _VALUE)
        retry = draw(st.none() | st.integers(0, 10**9))
        data = draw(st.lists(_VALUE, min_size=1, max_size=3))
        if event is not None:
            lines.append("event: " + event)
        if event_id is not None:
            lines.append("id: " + event_id)
        if retry is not None:
            lines.append(f"retry: {retry}")
        lines.extend("data: " + d for d in data)
        lines.append("")
        expected.append(("\n".join(data), event or None, event_id, retry))
    out: list[str] = []
    previous = ""
    for line in lines:
        eol = draw(_EOL)
        if previous == "\r" and line == "" and eol == "\n":
            eol = "\r\n"  # a lone CR then LF would merge into one line end
        out.append(line + eol)
        previous = eol
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + "".join(out)).encode(), expected


_CUTS = st.lists(st.integers(0, 10_000), max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_stream(), _CUTS)
def test_property_any_split_yields_the_events_of_one_piece(case: tuple[bytes, list[Fields]], cuts: list[int]) -> None:
    stream, expected = case
    whole = parse(stream)
    assert events_of(whole) == expected
    pieces = feed_all(split_at(stream, [c % (len(stream) + 1) for c in cuts]))
    assert events_of(pieces) == expected
    assert raw_of(pieces) == stream


# Fragments that make line structure and field names likely in random streams.
_FRAGMENT = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"data",
        b"data:",
        b"event:",
        b"id:",
        b"retry:",
        b":",
        b" ",
        b"1",
        b"x",
        b"\x00",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xe2\x82",
        b"\xc3\xa9",
        b"[DONE]",
    ]
)
_NOISY = st.lists(_FRAGMENT, max_size=60).map(b"".join) | st.binary(max_size=300)


@settings(max_examples=500)
@given(_NOISY, _CUTS)
def test_property_raw_bytes_reassemble_the_input_and_match_the_reference(stream: bytes, cuts: list[int]) -> None:
    items = feed_all(split_at(stream, [c % (len(stream) + 1) for c in cuts]))
    assert raw_of(items) == stream
    assert events_of(items) == reference(stream)


@settings(max_examples=500)
@given(_NOISY, _CUTS, st.integers(1, 64))
def test_property_random_bytes_raise_nothing_but_overflow(stream: bytes, cuts: list[int], limit: int) -> None:
    parser = SSEParser(max_event_bytes=limit)
    try:
        for read in split_at(stream, [c % (len(stream) + 1) for c in cuts]):
            parser.feed(read)
        parser.flush()
    except SSEOverflow:
        pass
