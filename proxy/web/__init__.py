"""The web shell: server-rendered pages for any plugin. Public API.

Weir mounts the shell on every app (`create_app`). It gives:
  * a Jinja2 environment (also aiohttp-jinja2's, so `aiohttp_jinja2.render_template`
    works) with autoescaping on; each plugin adds its own folder of templates under a
    prefix (`shell_of(app).add_templates("billing", folder)`), and extends `weir/base.html`,
    a clean layout (a vendored stylesheet, no script, no CDN) for laptop and phone widths;
  * the console's sign-in with `admin.token` at `/admin/login`, a signed session cookie
    (HttpOnly, SameSite=Strict, Secure over TLS), sign-in attempts limited per address;
    with no `admin.token`, `/admin...` answers 404;
  * helpers for handlers: `render`, `require_admin` (console pages), `require_admin_api`
    (Bearer admin token), `require_session` / `start_session` / `end_session` for a plugin's
    own sign-in realm (billing's dashboard signs users in with their API key),
    `checked_form` (CSRF), `api_error` (a JSON error), `error_page`, `local_path`,
    `flash` / `take_flash` (a message across a POST-redirect-GET);
  * the console's navigation: `add_admin_section`, and figures on its home page with
    `add_admin_cards`.

A plugin serves its pages from `routes()` and registers templates and sections in
`lifespan`; see docs/plugins.md, "Pages".
"""

from __future__ import annotations

from proxy.web.helpers import (
    api_error,
    checked_form,
    end_session,
    error_page,
    flash,
    local_path,
    render,
    require_admin,
    require_admin_api,
    require_session,
    session_of,
    start_session,
    take_flash,
)
from proxy.web.sessions import CSRF_FIELD, Session
from proxy.web.shell import ADMIN_SESSION_SECONDS, AdminCard, AdminSection, WebShell, shell_of

__all__ = [
    "ADMIN_SESSION_SECONDS",
    "CSRF_FIELD",
    "AdminCard",
    "AdminSection",
    "Session",
    "WebShell",
    "api_error",
    "checked_form",
    "end_session",
    "error_page",
    "flash",
    "local_path",
    "render",
    "require_admin",
    "require_admin_api",
    "require_session",
    "session_of",
    "shell_of",
    "start_session",
    "take_flash",
]
