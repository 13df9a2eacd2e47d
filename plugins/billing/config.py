"""The billing plugin's `config:` block (spec §2 plus the policy knobs of §5 and §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD
from proxy.host import Config, build_config


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """Billing settings. `pricing`, `groups` and `group_overrides` are parsed, with exact
    Decimal arithmetic and YAML-path errors, by `plugins.billing.pricing`."""

    quota_per_usd: int = DEFAULT_QUOTA_PER_USD
    pricing: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)
    group_overrides: dict[str, Any] = field(default_factory=dict)
    default_output_reserve: int = 4096
    on_client_disconnect: Literal["drain", "partial"] = "drain"
    drain_timeout: float = 60.0
    drain_max_bytes: int = 16 * 1024 * 1024
    checkpoint_every: float = 10.0
    hold_ttl: float = 86_400.0
    outbox_replay_every: float = 30.0
    auth_cache_ttl: float = 5.0
    first_run_demo: bool = False
    demo_usd: str = "1"
    #: Seconds between checks for a new price version saved by another instance (§9: within 5 s).
    price_poll_every: float = 1.0
    #: False turns off the public `/pricing` page and `GET /api/pricing` (they answer 404).
    pricing_page: bool = True

    def pricing_block(self) -> dict[str, Any]:
        """The keys `PricingConfig.from_plugin_config` reads."""
        return {
            "quota_per_usd": self.quota_per_usd,
            "pricing": self.pricing,
            "groups": self.groups,
            "group_overrides": self.group_overrides,
        }


_BILLING_USES = ("billing", "plugins.billing", "plugins.billing:BillingPlugin")


def billing_index(config: Config) -> int | None:
    """The position of the billing plugin in proxy.yaml's `plugins:`, or None."""
    for i, spec in enumerate(config.plugins):
        if spec.use in _BILLING_USES:
            return i
    return None


def billing_config(config: Config) -> BillingConfig:
    """The billing plugin's config from proxy.yaml, or the defaults when it is not listed."""
    i = billing_index(config)
    if i is None:
        return BillingConfig()
    return build_config(BillingConfig, config.plugins[i].config, f"plugins[{i}].config")
