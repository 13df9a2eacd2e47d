"""`python -m proxy` is `weir`."""

from __future__ import annotations

import sys

from proxy.cli import main

sys.exit(main())
