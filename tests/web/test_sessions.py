"""The shell's pieces on their own: signed sessions, CSRF tokens, the attempt limit, safe
redirects and the first-run admin token file."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.dataclass_builder import ConfigError
from proxy.web import local_path
from proxy.web.admin_token import resolve_admin_token
from proxy.web.attempts import SignInLimiter
from proxy.web.sessions import Signer

TOKEN = "admin-token-for-tests-0123456789"


def test_a_session_verifies_only_unaltered_in_its_realm_and_lifetime() -> None:
    signer = Signer.for_token(TOKEN)
    value = signer.issue("admin", "admin", now=1000.0)
    found = signer.verify(value, "admin", max_age=60, now=1010.0)
    assert found is not None and found.subject == "admin" and found.issued == 1000.0
    assert signer.verify(value, "user", max_age=60, now=1010.0) is None  # another realm
    assert signer.verify(value, "admin", max_age=60, now=1061.0) is None  # too old
    assert signer.verify(value, "admin", max_age=60, now=900.0) is None  # from the future
    body, mac = value.split(".")
    tampered = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]  # a middle character: all its bits count
    assert signer.verify(f"{tampered}.{mac}", "admin", 60, 1010.0) is None
    assert signer.verify(value + "x", "admin", 60, 1010.0) is None
    assert Signer.for_token("some-other-admin-token-000").verify(value, "admin", 60, 1010.0) is None
    # Every instance sharing the token agrees, without shared state.
    assert Signer.for_token(TOKEN).verify(value, "admin", 60, 1010.0) is not None


def test_csrf_tokens_belong_to_their_cookie() -> None:
    signer = Signer.for_token(TOKEN)
    token = signer.csrf_token("cookie-one-abcdefghijklmnop")
    assert signer.csrf_ok("cookie-one-abcdefghijklmnop", token)
    assert not signer.csrf_ok("cookie-two-abcdefghijklmnop", token)
    assert not signer.csrf_ok(None, token)
    assert not signer.csrf_ok("cookie-one-abcdefghijklmnop", None)
    assert not Signer.for_token("").csrf_ok("cookie-one-abcdefghijklmnop", token)


def test_the_limiter_counts_failures_per_address_within_its_window() -> None:
    limiter = SignInLimiter(limit=3, window=100)
    for t in (0, 1, 2):
        assert limiter.retry_after("10.0.0.1", now=t) == 0
        limiter.failed("10.0.0.1", now=t)
    assert limiter.retry_after("10.0.0.1", now=3) == pytest.approx(97)
    assert limiter.retry_after("10.0.0.2", now=3) == 0  # another address is not affected
    assert limiter.retry_after("10.0.0.1", now=100.5) == 0  # the first failure left the window
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after("10.0.0.1", now=3) == 0


def test_the_limiter_stays_bounded() -> None:
    limiter = SignInLimiter(limit=1, window=100, max_addresses=50)
    for i in range(500):
        limiter.failed(f"10.0.{i // 250}.{i % 250}", now=0)
    assert len(limiter._failures) == 50


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin/users?page=2", "/admin/users?page=2"),
        (None, "/d"),
        ("", "/d"),
        ("https://x.example/", "/d"),
        ("//x.example/", "/d"),
        ("/\\x.example", "/d"),
        ("admin", "/d"),
    ],
)
def test_redirect_targets_stay_on_the_site(target: str | None, expected: str) -> None:
    assert local_path(target, "/d") == expected


def test_the_token_file_is_made_once_private_and_printed_once(tmp_path: Path) -> None:
    (tmp_path / "proxy.yaml").write_text("")
    config = parse_config({"admin": {"token_file": "weir-admin-token"}}, env={}, source=str(tmp_path / "proxy.yaml"))
    out = io.StringIO()
    first = resolve_admin_token(config, out)
    path = tmp_path / "weir-admin-token"
    assert first.admin.token.startswith("wadm-") and len(first.admin.token) >= 40
    assert path.read_text().strip() == first.admin.token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.admin.token in out.getvalue() and "/admin" in out.getvalue()
    again = io.StringIO()
    assert resolve_admin_token(config, again).admin.token == first.admin.token
    assert again.getvalue() == ""  # printed once only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy.yaml", "weir-admin-token"]


def test_a_set_token_wins_and_a_short_file_is_a_config_error(tmp_path: Path) -> None:
    config = parse_config({"admin": {"token": TOKEN, "token_file": str(tmp_path / "t")}}, env={})
    assert resolve_admin_token(config).admin.token == TOKEN
    assert not (tmp_path / "t").exists()
    (tmp_path / "t").write_text("short\n")
    with pytest.raises(ConfigError, match="admin.token_file"):
        resolve_admin_token(parse_config({"admin": {"token_file": str(tmp_path / "t")}}, env={}))
