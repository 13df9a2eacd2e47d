"""The billing plugin: holds, metering and exactly-once settlement. See docs/billing.md.

`BillingPlugin` is imported on first use, so the CLI's pricing commands (which import
submodules of this package) do not pay for aiohttp and the store clients at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugins.billing.plugin import BillingPlugin

__all__ = ["BillingPlugin"]


def __getattr__(name: str) -> Any:
    if name == "BillingPlugin":
        from plugins.billing.plugin import BillingPlugin

        return BillingPlugin
    raise AttributeError(name)
