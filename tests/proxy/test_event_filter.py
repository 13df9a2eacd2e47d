"""`Plugin.event_filter`: a plugin's `on_event` sees only the events its pattern matches,
the others pass it unchanged, its tape keeps every event that reached it, and the order,
chain and DROP rules stay those of `on_event`."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson

from proxy.plugin import (
    DROP,
    Drop,
    EndReason,
    EventFilter,
    EventTape,
    Outcome,
    Plugin,
    RequestContext,
    SSEEvent,
)

STREAM = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}], "stream": True}
DONE = re.compile(rb"\[DONE\]")


async def post(url: str) -> bytes:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=STREAM) as r:
            assert r.status == 200
            return await r.read()


def datas(raw: bytes) -> list[str]:
    """The `data` of each event in raw SSE bytes."""
    return [event.data for event in EventTape.events([raw])]


class Watcher(Plugin):
    """Sees `[DONE]` only (and a full tape); keeps every event on its tape."""

    name = "watcher"

    def __init__(self, limit: int = 4096, drop_done: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.drop_done = drop_done
        self.seen: list[str] = []
        self.kept: list[bytes] = []
        self.tape: EventTape | None = None
        self.outcomes: list[Outcome] = []

    def event_filter(self, ctx: RequestContext) -> EventFilter | None:
        self.tape = EventTape(self.limit)
        return EventFilter(DONE, self.tape)

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | Drop | None:
        self.seen.append(event.data)
        if self.tape is not None and self.tape.full:
            self.kept += self.tape.take()
        if self.drop_done and event.data == "[DONE]":
            return DROP
        return None

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def all_kept(self) -> list[bytes]:
        assert self.tape is not None
        return self.kept + self.tape.raws


class Shouter(Plugin):
    """Sees every event (no filter): upper-cases content, drops the first content chunk."""

    name = "shouter"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | Drop | None:
        self.calls += 1
        data = event.json
        if isinstance(data, dict) and data.get("choices"):
            delta = data["choices"][0].get("delta", {})
            if delta.get("content") == "Mock":
                return DROP
            if delta.get("content"):
                delta["content"] = delta["content"].upper()
                return event.with_json(data)
        return None


async def test_only_matching_events_reach_on_event_and_the_tape_keeps_all(make_proxy: Any, fake_upstream: Any) -> None:
    watcher = Watcher()
    proxy = await make_proxy(plugins=[watcher])
    direct = await post(fake_upstream.url)
    body = await post(proxy.url)
    await proxy.settled()
    assert body == direct  # events passed by are relayed as their original bytes
    assert watcher.seen == ["[DONE]"]
    assert b"".join(watcher.all_kept()) == direct
    assert watcher.outcomes[0].reason is EndReason.COMPLETED
    assert watcher.outcomes[0].events == len(datas(direct))


async def test_a_full_tape_calls_on_event_so_memory_stays_bounded(make_proxy: Any, fake_upstream: Any) -> None:
    fake_upstream.behaviour.words = 12
    watcher = Watcher(limit=3)
    proxy = await make_proxy(plugins=[watcher])
    body = await post(proxy.url)
    await proxy.settled()
    assert b"".join(watcher.all_kept()) == body
    assert len(watcher.seen) >= len(datas(body)) // 3
    assert watcher.tape is not None and len(watcher.tape) <= 3


async def test_a_filtering_plugin_sees_the_chain_as_it_reached_it(make_proxy: Any, fake_upstream: Any) -> None:
    """The shouter, nearer the upstream, changes and drops events before the watcher's tape
    keeps them; the watcher's DROP of `[DONE]` still drops it."""
    watcher, shouter = Watcher(drop_done=True), Shouter()
    proxy = await make_proxy(plugins=[watcher, shouter])
    direct = await post(fake_upstream.url)
    body = await post(proxy.url)
    await proxy.settled()
    assert b"[DONE]" not in body and b"MOCK" not in body and "Mock" not in str(datas(body))
    assert shouter.calls == len(datas(direct))
    kept = watcher.all_kept()
    assert b"".join(kept) == body + b"data: [DONE]\n\n"  # the tape keeps what the watcher dropped
    assert watcher.seen == ["[DONE]"]


async def test_a_plugin_that_declares_nothing_sees_every_event(make_proxy: Any, fake_upstream: Any) -> None:
    class Undecided(Watcher):
        def event_filter(self, ctx: RequestContext) -> EventFilter | None:
            return None

    undecided = Undecided()
    proxy = await make_proxy(plugins=[undecided])
    direct = await post(fake_upstream.url)
    await post(proxy.url)
    await proxy.settled()
    assert undecided.seen == datas(direct)


async def test_a_wrong_declaration_is_the_plugins_failure(make_proxy: Any, fake_upstream: Any) -> None:
    class Wrong(Watcher):
        def event_filter(self, ctx: RequestContext) -> EventFilter | None:
            return DONE  # type: ignore[return-value]

    wrong = Wrong()
    proxy = await make_proxy(plugins=[wrong])
    body = await post(proxy.url)
    await proxy.settled()
    assert wrong.outcomes[0].reason is EndReason.PLUGIN_FAILED
    assert wrong.seen == [] and b"[DONE]" not in body


def test_a_filter_takes_bytes_or_a_compiled_bytes_pattern_only() -> None:
    assert EventFilter(rb"usage").pattern is not None
    assert EventFilter(re.compile(rb"usage")).pattern is not None
    assert EventFilter().pattern is None
    for bad in ("usage", re.compile("usage")):
        try:
            EventFilter(bad)  # type: ignore[arg-type]
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_a_tape_parses_back_to_the_events_it_kept() -> None:
    events = [SSEEvent("one"), SSEEvent('{"a": 1}', event="delta", id="7"), SSEEvent("two\nlines")]
    tape = EventTape(limit=2)
    for event in events:
        tape.raws.append(event.raw)
    assert tape.full
    parsed = EventTape.events(tape.take())
    assert [(e.data, e.event) for e in parsed] == [(e.data, e.event) for e in events]
    assert len(tape) == 0 and orjson.loads(parsed[1].data) == {"a": 1}


async def test_filters_of_several_plugins_each_see_their_events(make_proxy: Any, fake_upstream: Any) -> None:
    """A substring sieve on `data`, alone or before a pattern, and a pattern; one plugin
    with neither sees nothing; every tape keeps every event."""

    class Sieved(Watcher):
        def __init__(self, pattern: bytes | None, substring: str | None) -> None:
            super().__init__()
            self.pattern, self.substring = pattern, substring

        def event_filter(self, ctx: RequestContext) -> EventFilter | None:
            self.tape = EventTape()
            return EventFilter(self.pattern, self.tape, substring=self.substring)

    mock, finish, done, blind = (
        Sieved(None, "Mock"),
        Sieved(rb'"finish_reason":"stop"', "finish_reason"),
        Sieved(rb"\[DONE\]", None),
        Sieved(None, None),
    )
    proxy = await make_proxy(plugins=[mock, finish, done, blind])
    direct = await post(fake_upstream.url)
    body = await post(proxy.url)
    await proxy.settled()
    assert body == direct
    every = datas(direct)
    assert mock.seen == [d for d in every if "Mock" in d] and mock.seen
    assert finish.seen == [d for d in every if '"finish_reason":"stop"' in d] and finish.seen
    assert done.seen == ["[DONE]"] and blind.seen == []
    for plugin in (mock, finish, done, blind):
        assert b"".join(plugin.all_kept()) == direct
    alone = Sieved(None, "Mock")  # the relay's sieve on `data` alone
    proxy = await make_proxy(plugins=[alone])
    assert await post(proxy.url) == direct
    await proxy.settled()
    assert alone.seen == mock.seen and b"".join(alone.all_kept()) == direct


def test_a_substring_is_a_line_of_text() -> None:
    for bad in ("", "two\nlines", b"usage"):
        try:
            EventFilter(substring=bad)  # type: ignore[arg-type]
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} accepted")
