"""Signed session cookies and CSRF tokens for the web shell.

A session is stateless: the cookie holds its realm, subject, issue time and a nonce, signed
with HMAC-SHA256 under the shell's secret. Nothing is kept in memory, so every worker of
`weir serve --workers N` (and every instance sharing the same `admin.token`) accepts the
sessions any other one issued. The secret derives from `admin.token`: changing the token
signs every session out. Without a token there is no admin realm, and the secret is random
per process (see docs/console.md).

CSRF uses a signed double submit: a random `weir_csrf` cookie (HttpOnly, SameSite=Strict)
and, in every state-changing form, `HMAC(secret, cookie)`. A cross-site page can neither read
the cookie nor compute the HMAC; the check is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.forwarded import TrustedProxies

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "Session", "Signer", "is_secure"]

CSRF_COOKIE = "weir_csrf"
#: The hidden form field every state-changing form carries.
CSRF_FIELD = "csrf"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: `realm` ("admin", or a plugin's own such as "user"), `subject`
    (whom the realm's owner says it is, e.g. a key id) and when it was issued."""

    realm: str
    subject: str
    issued: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks session cookies and CSRF tokens under one secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def for_token(cls, admin_token: str) -> Signer:
        """The signer for a config: derived from `admin.token` (so every instance sharing the
        token agrees), or a random secret for this process when there is none."""
        if admin_token:
            return cls(hmac.new(admin_token.encode(), b"weir web sessions v1", hashlib.sha256).digest())
        return cls(secrets.token_bytes(32))

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest()

    def seal(self, purpose: str, data: dict[str, Any], now: float | None = None) -> str:
        """`data` (small, JSON) signed for `purpose`, with the time it was sealed. Signed, not
        encrypted: the browser can read what it holds, never change it."""
        payload = orjson.dumps({"d": data, "i": time.time() if now is None else now, "n": secrets.token_hex(8)})
        return f"{_b64(payload)}.{_b64(self._mac(purpose.encode(), payload))}"

    def unseal(
        self, purpose: str, value: str, max_age: float, now: float | None = None
    ) -> tuple[dict[str, Any], float] | None:
        """What `seal(purpose, …)` put in `value`, and when, if the signature is good and it is
        younger than `max_age` seconds; otherwise None (never an exception)."""
        body, _, mac = value.partition(".")
        try:
            payload = _unb64(body)
            good = hmac.compare_digest(_unb64(mac), self._mac(purpose.encode(), payload))
            sealed = orjson.loads(payload) if good else None
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(sealed, dict) or not isinstance(sealed.get("d"), dict):
            return None
        issued = sealed.get("i")
        if not isinstance(issued, (int, float)) or isinstance(issued, bool):
            return None
        age = (time.time() if now is None else now) - issued
        return (sealed["d"], float(issued)) if 0 <= age < max_age else None

    def issue(self, realm: str, subject: str, now: float | None = None) -> str:
        """A cookie value for a new session of `realm`."""
        return self.seal(f"session {realm}", {"s": subject}, now)

    def verify(self, value: str, realm: str, max_age: float, now: float | None = None) -> Session | None:
        """The session in `value` if its signature is good, it belongs to `realm` and it is
        younger than `max_age` seconds; otherwise None (never an exception)."""
        found = self.unseal(f"session {realm}", value, max_age, now)
        if found is None or not isinstance(found[0].get("s"), str):
            return None
        return Session(realm, found[0]["s"], found[1])

    def csrf_token(self, cookie: str) -> str:
        """The form token that goes with a `weir_csrf` cookie value."""
        return _b64(self._mac(b"csrf", cookie.encode()))

    def csrf_ok(self, cookie: str | None, presented: object) -> bool:
        """Whether a form's token matches its cookie (constant time)."""
        if not cookie or not isinstance(presented, str):
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(cookie).encode())


def is_secure(request: web.Request, trusted: TrustedProxies) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted reverse proxy
    that says so in `X-Forwarded-Proto` (an untrusted peer's header is ignored)."""
    if request.secure:
        return True
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not trusted.trusts(ip):
        return False
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.rsplit(",", 1)[-1].strip().lower() == "https"
