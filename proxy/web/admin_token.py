"""`admin.token_file`: the admin token generated on first start, so that the bundled
proxy.yaml gives a newcomer a working console on `make run` with nothing to set.

The file is created atomically (written beside, then hard-linked into place, which fails if
it exists), so when several workers start at once exactly one generates and prints the
token and the others read it. It is printed to the terminal once, never to the log.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from proxy.config import Config
from proxy.dataclass_builder import ConfigError
from proxy.listen import display_address

__all__ = ["resolve_admin_token"]

#: Prefix of generated tokens: tells them apart from users' `wk-` keys at a glance.
PREFIX = "wadm-"


def _path(config: Config) -> Path:
    path = Path(config.admin.token_file).expanduser()
    if path.is_absolute():
        return path
    base = Path(config.source).parent if config.source else Path.cwd()
    return base / path


def _create(path: Path) -> str | None:
    """Write a fresh token to `path` unless it exists; the token, or None if it existed."""
    token = PREFIX + secrets.token_urlsafe(30)[:40]
    spare = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.link(spare, path)
    except FileExistsError:
        return None
    finally:
        spare.unlink(missing_ok=True)
    return token


def _read(path: Path) -> str:
    # Another worker may have linked the file a moment ago: its content is complete (it was
    # written before the link), so one read suffices; the loop only covers a slow disk.
    for _ in range(50):
        token = path.read_text(encoding="utf-8").strip()
        if token:
            break
        time.sleep(0.01)
    if len(token) < 16:
        raise ConfigError("admin.token_file", f"{path} must hold a token of at least 16 characters")
    return token


def resolve_admin_token(config: Config, out: TextIO | None = None) -> Config:
    """`config` with `admin.token` filled from `admin.token_file` (generated on first start).

    Unchanged when `admin.token` is set or no `token_file` is named."""
    admin = config.admin
    if admin.token or not admin.token_file:
        return config
    path = _path(config)
    try:
        created = _create(path) if not path.exists() else None
        token = created or _read(path)
    except OSError as exc:
        raise ConfigError("admin.token_file", f"cannot use {path}: {exc.strerror or exc}") from None
    if created:
        where = f"http://{display_address(config.server.host, config.server.port)}/admin"
        stream = out or sys.stdout
        stream.write(
            f"\n  Weir first run: the admin console is at {where}\n"
            f"  Admin token (shown once here; kept in {path}, mode 0600): {created}\n\n"
        )
        stream.flush()
    return replace(config, admin=replace(admin, token=token))
