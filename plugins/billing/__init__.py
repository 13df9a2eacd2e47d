"""The billing plugin: holds, metering and exactly-once settlement. See docs/billing.md."""

from __future__ import annotations

from plugins.billing.plugin import BillingPlugin

__all__ = ["BillingPlugin"]
