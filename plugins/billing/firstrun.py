"""First run: on an empty store, create a `demo` user with some dollars and print its key once."""

from __future__ import annotations

import sys
from decimal import ROUND_HALF_UP, Decimal

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.store.base import Store, StoreError


async def ensure_demo_user(store: Store, config: BillingConfig) -> str | None:
    """Create `demo` with `demo_usd` and a key when there are no users; return the key."""
    if await store.list_users():
        return None
    quota = int((Decimal(config.demo_usd) * config.quota_per_usd).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    try:
        await store.create_user("demo")
    except StoreError:
        return None  # another instance got there first
    await store.credit("demo", quota, note="first-run demo credit")
    clear, digest, hint = generate_key()
    await store.create_key("demo", digest, name="demo", hint=hint)
    # Printed once, to the terminal only (never to the log): it is a secret.
    sys.stdout.write(
        "\n  Weir first run: created user 'demo' with "
        f"${config.demo_usd} ({quota} quota units).\n"
        f"  Its API key (shown once, store it now): {clear}\n\n"
    )
    sys.stdout.flush()
    return clear
