"""The web shell over HTTP: the console's sign-in, its cookie, CSRF, the attempt limit, and
404 everywhere admin when no `admin.token` is set."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from proxy.testing import ProxyHandle

TOKEN = "admin-token-for-tests-0123456789"
MakeProxy = Callable[..., Awaitable[ProxyHandle]]


def session() -> aiohttp.ClientSession:
    # Cookies from 127.0.0.1 need the unsafe jar; redirects are checked by hand.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def csrf_of(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as r:
        assert r.status == 200, await r.text()
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found
    return found.group(1)


async def sign_in(s: aiohttp.ClientSession, base: str, token: str = TOKEN, **extra: str) -> aiohttp.ClientResponse:
    csrf = await csrf_of(s, base + "/admin/login")
    async with s.post(base + "/admin/login", data={"csrf": csrf, "token": token, **extra}, allow_redirects=False) as r:
        await r.read()
        return r


async def test_without_an_admin_token_every_admin_page_is_404(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    async with session() as s:
        for method, path in (
            ("GET", "/admin"),
            ("GET", "/admin/login"),
            ("POST", "/admin/login"),
            ("POST", "/admin/logout"),
        ):
            async with s.request(method, proxy.url + path, data={"token": "x" * 20}, allow_redirects=False) as r:
                assert r.status == 404, (method, path)
                assert "There is no page here" in await r.text()
        async with s.get(proxy.url + "/") as r:  # the front page says how to open the console
            assert r.status == 200
            assert "admin.token" in await r.text()


async def test_console_asks_to_sign_in_then_lets_the_admin_in(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    async with session() as s:
        async with s.get(proxy.url + "/admin", allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/admin/login?next=/admin"
        r = await sign_in(s, proxy.url, next="/admin")
        assert r.status == 303 and r.headers["Location"] == "/admin"
        cookie = next(v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith("weir_admin="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        async with s.get(proxy.url + "/admin") as r:
            html = await r.text()
            assert r.status == 200 and "Sign out" in html
            assert TOKEN not in html  # the token is never rendered
            assert r.headers["Cache-Control"] == "no-store"
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf
        async with s.post(proxy.url + "/admin/logout", data={"csrf": csrf.group(1)}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(proxy.url + "/admin", allow_redirects=False) as r:
            assert r.status == 303  # signed out


async def test_a_wrong_token_is_refused_and_repeated_attempts_are_limited(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    async with session() as s:
        for _ in range(10):
            r = await sign_in(s, proxy.url, token="not-the-admin-token-at-all")
            assert r.status == 401
        r = await sign_in(s, proxy.url, token=TOKEN)  # even the right one waits now
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0
        async with s.get(proxy.url + "/admin", allow_redirects=False) as r:
            assert r.status == 303


async def test_a_form_without_its_csrf_token_is_refused(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    async with session() as s:
        await csrf_of(s, proxy.url + "/admin/login")  # the browser has a CSRF cookie
        for data in ({"token": TOKEN}, {"token": TOKEN, "csrf": "forged"}):
            async with s.post(proxy.url + "/admin/login", data=data, allow_redirects=False) as r:
                assert r.status == 403
                assert "security token" in await r.text()
        async with s.get(proxy.url + "/admin", allow_redirects=False) as r:
            assert r.status == 303  # still not signed in
    async with session() as other:  # a token from another browser's cookie is no good either
        async with session() as mine:
            csrf = await csrf_of(mine, proxy.url + "/admin/login")
        await csrf_of(other, proxy.url + "/admin/login")
        async with other.post(
            proxy.url + "/admin/login", data={"csrf": csrf, "token": TOKEN}, allow_redirects=False
        ) as r:
            assert r.status == 403


async def test_a_tampered_or_foreign_session_cookie_is_not_a_session(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    other = await make_proxy(admin={"token": "another-admin-token-9876543210"})
    async with session() as s:
        await sign_in(s, other.url, token="another-admin-token-9876543210")
        foreign = next(c.value for c in s.cookie_jar if c.key == "weir_admin")
    for value in (foreign, foreign[:-2] + "AA", "garbage", foreign.split(".")[0]):
        async with aiohttp.ClientSession() as s:
            async with s.get(
                proxy.url + "/admin", headers={"Cookie": f"weir_admin={value}"}, allow_redirects=False
            ) as r:
                assert r.status == 303, value


@pytest.mark.parametrize(("trusted", "secure"), [([], False), (["127.0.0.1/32"], True)])
async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(
    make_proxy: MakeProxy, trusted: list[str], secure: bool
) -> None:
    proxy = await make_proxy(admin={"token": TOKEN}, server={"trusted_proxies": trusted})
    async with session() as s:
        csrf = await csrf_of(s, proxy.url + "/admin/login")
        async with s.post(
            proxy.url + "/admin/login",
            data={"csrf": csrf, "token": TOKEN},
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as r:
            cookie = next(v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith("weir_admin="))
    assert ("Secure" in cookie) is secure


async def test_sign_in_never_redirects_to_another_site(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        async with session() as s:
            r = await sign_in(s, proxy.url, next=target)
            assert r.status == 303 and r.headers["Location"] == "/admin", target


async def test_static_stylesheet_is_served(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/") as r:
            href = re.search(r'href="(/static/weir/weir\.css\?v=[0-9a-f]+)"', await r.text())
        assert href
        async with s.get(proxy.url + href.group(1)) as r:
            assert r.status == 200 and r.content_type == "text/css"
            assert ".topbar" in await r.text()
