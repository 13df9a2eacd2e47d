"""Run by dist/weir (the shiv zipapp) after it has unpacked its site-packages and before
Weir starts. The build carries compiled modules (orjson, aiohttp, uvloop, ...) for one Python
version and platform: on another Python they would fail deep inside an import, so say so
here in one line instead, with what to do about it."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def _check(site_packages: Path) -> None:
    if not site_packages.is_dir():
        return
    here = str(sysconfig.get_config_var("EXT_SUFFIX") or "")
    built = sorted({"." + p.name.split(".", 1)[1] for p in site_packages.glob("orjson/*.so")})
    if not built or here in built:
        return
    version = ".".join(map(str, sys.version_info[:2]))
    print(
        f"weir: this build's compiled modules are for {built[0]!r}, but this Python {version} loads "
        f"{here!r}: run dist/weir with the Python it was built with, or run `make dist` on this machine",
        file=sys.stderr,
    )
    sys.exit(2)


# shiv's runtime passes `site_packages` (the unpacked folder) to this script.
_check(Path(str(globals().get("site_packages", ""))))
