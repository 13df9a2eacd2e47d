"""The console's record pages over HTTP: the log with filters, paging and CSV; upstream
health; the audit. Each needs the admin session."""

from __future__ import annotations

import csv
import io
import re

from tests.web.conftest import ConsoleFactory, admin_client, browser_session


async def test_record_pages_need_the_admin(console: ConsoleFactory) -> None:
    c = await console()
    async with browser_session() as s:
        for path in ("/admin/logs", "/admin/logs.csv", "/admin/upstreams", "/admin/audit"):
            async with s.get(c.url + path, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/admin/login?next="), path
    plain = await console(admin=False)
    async with browser_session() as s:
        async with s.get(plain.url + "/admin/logs", allow_redirects=False) as r:
            assert r.status == 404


async def test_logs_filter_page_and_export(console: ConsoleFactory) -> None:
    c = await console()
    alice, bob = await c.user("alice"), await c.user('=HYPERLINK("x")')
    assert await c.chat(alice) == 200
    assert await c.chat(alice, model="mock-claude") == 200
    assert await c.chat(bob) == 200
    c.upstream.behaviour.fail_status = 500
    c.upstream.behaviour.fail_times = 1
    assert await c.chat(alice) == 500
    c.upstream.behaviour.fail_status = 0
    s = await admin_client(c.url)
    async with s:
        async with s.get(c.url + "/admin/logs") as r:
            html = await r.text()
        assert html.count("<tr>") == 5  # a header and four requests
        async with s.get(c.url + "/admin/logs", params={"user": "alice", "model": "mock-c*"}) as r:
            html = await r.text()
        assert html.count("<tr>") == 2 and "mock-claude" in html
        async with s.get(c.url + "/admin/logs", params={"outcome": "upstream_error"}) as r:
            html = await r.text()
        assert html.count("<tr>") == 2 and "upstream_error" in html
        key_id = (await c.store.list_keys("alice"))[0].id
        async with s.get(c.url + "/admin/logs", params={"key": key_id}) as r:
            assert (await r.text()).count("<tr>") == 4
        async with s.get(c.url + "/admin/logs", params={"since": "not a time"}) as r:
            assert "is not an ISO 8601 time" in await r.text()
        async with s.get(c.url + "/admin/logs.csv") as r:
            assert r.status == 200 and r.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(rows) == 4
    assert {row["user"] for row in rows} == {"alice", '\'=HYPERLINK("x")'}  # no formula in a spreadsheet
    assert {row["end_reason"] for row in rows} == {"completed", "upstream_error"}


async def test_logs_page_through_older_rows(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    for _ in range(3):
        assert await c.chat(key) == 200
    from plugins.billing.web import console_records

    console_records.PAGE_ROWS, saved = 2, console_records.PAGE_ROWS
    try:
        s = await admin_client(c.url)
        async with s:
            async with s.get(c.url + "/admin/logs") as r:
                html = await r.text()
            older = re.search(r'href="(/admin/logs\?before=\d+)"', html)
            assert html.count("<tr>") == 3 and older
            async with s.get(c.url + older.group(1)) as r:
                html = await r.text()
            assert html.count("<tr>") == 2 and "← Newest" in html
    finally:
        console_records.PAGE_ROWS = saved


async def test_upstreams_and_audit(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    assert await c.chat(key) == 200
    s = await admin_client(c.url)
    async with s:
        async with s.get(c.url + "/admin/upstreams") as r:
            html = await r.text()
        assert "fake" in html and "healthy" in html and "0 / 1" in html
        async with s.get(c.url + "/admin/audit") as r:
            html = await r.text()
        assert "The ledger is clean" in html


async def test_record_pages_show_a_store_outage_as_503(console: ConsoleFactory, monkeypatch: object) -> None:
    """The record pages are guarded like the others: an unreachable store is a 503 page that
    says so, not a bare 500."""
    from plugins.billing.store.base import StoreUnavailable

    c = await console()
    s = await admin_client(c.url)

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(c.store, "query_logs", down)  # type: ignore[attr-defined]
    async with s:
        for path in ("/admin/logs", "/admin/logs.csv"):
            async with s.get(c.url + path) as r:
                assert r.status == 503, path
                assert "The account store is unavailable." in await r.text()


async def test_csv_export_cut_by_a_store_outage_is_not_a_whole_file(
    console: ConsoleFactory, monkeypatch: object
) -> None:
    """Once the CSV's headers are sent, a store failure cuts the connection: the client's
    download fails instead of ending as a well-formed file that lacks rows."""
    import aiohttp

    from plugins.billing.store.base import StoreUnavailable
    from plugins.billing.web import console_records

    c = await console()
    alice = await c.user("alice")
    for _ in range(3):
        assert await c.chat(alice) == 200
    real = c.store.query_logs
    calls = 0

    async def fails_later(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise StoreUnavailable("the store went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(console_records, "CSV_PAGE", 1)  # type: ignore[attr-defined]
    monkeypatch.setattr(c.store, "query_logs", fails_later)  # type: ignore[attr-defined]
    s = await admin_client(c.url)
    async with s:
        async with s.get(c.url + "/admin/logs.csv") as r:
            assert r.status == 200
            try:
                await r.read()
            except aiohttp.ClientPayloadError:
                pass
            else:
                raise AssertionError("a cut export ended as a whole file")
    assert calls == 2
