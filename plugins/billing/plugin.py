"""The billing plugin: hold from the request body, meter the response, settle exactly once.

Built only on the public plugin API (`proxy.plugin`) and the `Store` protocol:
  * `on_request`: authenticate, check allowlists, price, estimate, hold; force
    `include_usage` on OpenAI streams;
  * `on_event` / `on_body`: meter; hide the injected usage chunk;
  * `on_complete` / `on_error`: capture or release per spec §6 (`plugins.billing.charge_table`);
  * a timer (`checkpoint_every`) checkpoints every long-lived request's charge so far.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
from aiohttp import web

from plugins.billing import web as pages
from plugins.billing.accounts.values import Money
from plugins.billing.auth import KeyCache, authenticate, store_down
from plugins.billing.charge_table import settle
from plugins.billing.config import BillingConfig
from plugins.billing.estimate import IMAGE_ENDPOINTS, Estimate, Estimator, form_payload
from plugins.billing.firstrun import ensure_demo_user
from plugins.billing.ledger import running_ledger
from plugins.billing.live import LiveRequests
from plugins.billing.models_list import keep_allowed
from plugins.billing.money_metrics import MoneyMetrics, watch_open_holds
from plugins.billing.outbox import Outbox, Settler
from plugins.billing.pending import SettlementMetrics, report_pending
from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.price_table import PriceTable
from plugins.billing.prices import health as channel_health
from plugins.billing.prices.wiring import Pricing
from plugins.billing.request_state import BILLING, Billing, ask_for_usage, log_details, metered, refusal
from plugins.billing.store.base import ApiKey, Hold, HoldRefusal, LogDetails, Store, StoreUnavailable, User
from plugins.billing.stream_meter import StreamMeter
from plugins.billing.sweeper import InflightSweeper
from plugins.billing.tasks.apis import TaskApis
from plugins.billing.tasks.engine import TaskEngine
from plugins.billing.tasks.requests import TASK_ENDPOINTS, TaskRequests
from plugins.billing.tokenizer import Tokenizer
from plugins.billing.upkeep import replay_outboxes, upkeep_forever
from proxy.host import TaskTracker, host_of
from proxy.plugin import (
    DROP,
    Drop,
    Endpoint,
    EndReason,
    EventFilter,
    Outcome,
    Plugin,
    ProxyError,
    Reject,
    RequestContext,
    SSEEvent,
    StateKey,
)

log = logging.getLogger(__name__)

#: Endpoints that are authenticated but never held or charged.
FREE = frozenset({Endpoint.MODELS, Endpoint.COUNT_TOKENS, Endpoint.GEMINI_COUNT_TOKENS})
# Enum members looked up on the class cost ~1k instructions each (EnumType has a __getattr__).
_MODELS = Endpoint.MODELS
_MODERATIONS = Endpoint.MODERATIONS
_REASON_TEXT = {reason: reason.value for reason in EndReason}  # `.value` is a Python property call
#: The model OpenAI moderates with when a request names none: priced (or free) as that.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
#: Where a usage object may start: the events `on_event` must see to hide a usage chunk.
_USAGE_CHUNK = re.compile(rb'usage"\s*:\s*\{')
#: An unbilled stream: `on_event` sees none of its events, none are kept.
_NO_EVENTS = EventFilter()
#: A key's model allowlist, kept for `on_body` to narrow `/v1/models` to it.
MODEL_ALLOWLIST = StateKey[tuple[str, ...]]("billing.model_allowlist")


class BillingPlugin(Plugin):
    """Two-phase billing on every proxied request. See docs/billing.md."""

    name: ClassVar[str] = "billing"
    Config: ClassVar[type[Any]] = BillingConfig
    authenticates: ClassVar[bool] = True

    def __init__(self, config: BillingConfig | None = None, *, store: Store | None = None) -> None:
        """`store`: an already built, unopened store to use instead of the one proxy.yaml's
        `store:` names (tests and benchmarks inject one, e.g. with a fake clock)."""
        super().__init__(config)
        self._injected_store = store
        self.config: BillingConfig = self.config
        self.prices = LiteLLMPrices()
        #: Prices: the version charged now (`book`), kept current from the store; the pages' desk.
        self.pricing = Pricing(self.config, self.prices)
        self.book = self.pricing.book
        self.tokenizer = Tokenizer()
        # A model's output limit comes from the bundled reference data, used for prices or not.
        self.estimator = Estimator(
            self.tokenizer, self.config.quota_per_usd, self.config.default_output_reserve, self.prices.max_output_tokens
        )
        self.keys = KeyCache(self.config.auth_cache_ttl)
        #: What billing's pages and HTTP API read (`plugins.billing.web`).
        self.web = pages.BillingWeb(lambda: self.store, Money(self.config.quota_per_usd), self.config.checkpoint_every)
        self._store: Store | None = None
        self._tasks: TaskTracker | None = None
        self._instance = ""
        self._settler: Settler | None = None
        self._sweeper = InflightSweeper("")
        #: The billed requests between their hold and their terminal hook, for the checkpoint timer.
        self._live = LiveRequests(self.config.quota_per_usd)
        self.money = MoneyMetrics(self.config.quota_per_usd)
        self.money.live = self._live.holds
        self._tasks_side: TaskRequests | None = None

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """Open the ledger store (`plugins.billing.ledger`), bind to the host's task tracker,
        replay the outbox, and on an empty store (with `first_run_demo`) create the demo user.
        The tokenizer's vocabularies load on first use (`on_request`), not here."""
        host = host_of(app)
        async with running_ledger(host, self._injected_store, self.money.orphans_resolved) as store:
            self._store = store
            self._tasks = host.tasks
            self._instance = host.instance_id
            self._settler = Settler(
                store, Outbox(host.config_dir / "weir-outbox", self._instance), on_store_error=self.money.store_error
            )
            self._sweeper = InflightSweeper(self._instance)
            qpu = self.config.quota_per_usd
            engine = TaskEngine(
                store, host, self.config.tasks, TaskApis(host.config.task_apis), on_end=self.money.task_ended
            )
            self._tasks_side = TaskRequests(
                engine,
                lambda: self.book.current,
                self._settler,
                self._sweeper,
                self._instance,
                self.config.hold_ttl,
                lambda refused, amount: refusal(refused, amount, qpu),
            )
            collector = SettlementMetrics(self._settler)
            host.metrics.register(collector)
            settler = self._settler
            self.money.retries = lambda: settler.retried
            host.metrics.register(self.money)
            price_poll = await self.pricing.start(app, store)
            pages.install(app, self.web)
            await replay_outboxes(self._settler)
            if self.config.first_run_demo:
                await ensure_demo_user(store, self.config)
            services = [
                host.tasks.spawn_service(
                    upkeep_forever(self._settler, self._sweeper, store, self.config.outbox_replay_every),
                    name="billing-outbox-replay",
                ),
                host.tasks.spawn_service(
                    self._live.checkpoint_forever(store, self.config.checkpoint_every), name="billing-checkpoints"
                ),
                host.tasks.spawn_service(report_pending(self._settler), name="billing-pending-report"),
                host.tasks.spawn_service(watch_open_holds(store, self.money), name="billing-open-holds"),
                host.tasks.spawn_service(engine.poll_forever(), name="billing-task-poller"),
                price_poll,
            ]
            try:
                yield
            finally:
                for service in services:
                    service.cancel()
                host.metrics.unregister(collector)
                host.metrics.unregister(self.money)

    def routes(self) -> list[web.RouteDef]:
        """The price list and editor (`/api/pricing`, `/api/admin/prices` and their pages), the
        user API, the dashboard, and the admin API and console (`plugins.billing.web`)."""
        return [*self.pricing.routes(), *pages.routes(self.web)]

    @property
    def table(self) -> PriceTable:
        """The price table charged now (the current price version's)."""
        return self.book.current.table

    @property
    def store(self) -> Store:
        """The account store (bound at startup)."""
        if self._store is None:
            raise RuntimeError("billing plugin used before its lifespan started")
        return self._store

    async def on_request(self, ctx: RequestContext) -> None:
        """Authenticate; for billable endpoints price, estimate and hold (or refuse)."""
        store = self.store
        key, user = await authenticate(store, ctx, self.keys)
        endpoint = ctx.endpoint
        if endpoint in FREE:
            if endpoint is _MODELS and key.models:
                ctx.state[MODEL_ALLOWLIST] = key.models
            return
        if endpoint in TASK_ENDPOINTS:  # async tasks: plugins.billing.tasks
            await self.tasks.on_request(ctx, key, user)
            return
        model = ctx.model
        if model is None:
            if endpoint is not _MODERATIONS:
                raise Reject(400, "invalid_request_error", "'model' is required: it decides the price")
            model = DEFAULT_MODERATION_MODEL
        prices = self.book.current  # one version for the whole request, even if a new one lands
        found = prices.table.describe(model)
        if endpoint is _MODERATIONS and (found is None or found[0].is_free):
            return  # moderation is free unless the operator prices it
        if found is None:
            raise Reject(400, "model_not_priced", f"model {model!r} has no price; ask the operator to add one")
        price = found[0]
        if price.is_task:
            raise Reject(
                400, "model_not_priced", f"model {model!r} is priced per second of a task: use it with a task API"
            )
        multiplier = prices.table.multiplier(user.group, key.group)
        body = ctx.json if ctx.json is not None else form_payload(ctx.form)
        tokenizer = self.estimator.tokenizer  # the one that counts this request's prompt
        if (family := tokenizer.unloaded(model)) is not None:
            # The model's vocabulary, on its first use: in a thread, the loop serves meanwhile.
            await asyncio.to_thread(tokenizer.encoding, family)
        # A body the estimate cannot accept raises `BadRequest`, a `Reject` (400).
        estimate = self.estimator.estimate(ctx.endpoint, body, model, price, multiplier)
        hold = await self._hold(store, ctx, key, user, estimate, prices.label)
        try:
            hide = ask_for_usage(ctx) if ctx.stream else False
            n = body.get("n", 1) if endpoint in IMAGE_ENDPOINTS else 1
            # Counts the relayed output when usage is missing, as `tokenizer.count(text, model)`.
            count = self.tokenizer.counter(self.tokenizer.family(model))
            st = ctx.state[BILLING] = Billing(
                key,
                user,
                hold,
                price,
                multiplier,
                estimate,
                StreamMeter(ctx.endpoint, count),
                hide,
                n if isinstance(n, int) else 1,
            )
        except BaseException:
            # This plugin will get no terminal hook: give the hold back before failing.
            self._spawn(self._release_unknown(ctx.request_id, "plugin_failed"), f"release:{ctx.request_id}")
            raise
        self._live.add(ctx, st)
        ctx.drain_on_disconnect = self.config.on_client_disconnect == "drain"
        ctx.drain_timeout = self.config.drain_timeout
        ctx.drain_max_bytes = self.config.drain_max_bytes

    async def _hold(
        self, store: Store, ctx: RequestContext, key: ApiKey, user: User, estimate: Estimate, price_version: str
    ) -> Hold:
        self._sweeper.track(ctx.request_id)
        started = time.monotonic()
        try:
            result = await store.hold(
                ctx.request_id,
                user.name,
                key.id,
                estimate.quota,
                None,
                price_version,
                self.config.hold_ttl,
                self._instance,
                ctx.model or "",
            )
        except StoreUnavailable as exc:
            self.money.store_error("hold", exc)
            # The hold may or may not have been written: release it once the store is back.
            self._spawn(self._release_unknown(ctx.request_id), f"release-unknown:{ctx.request_id}")
            raise store_down() from None
        except BaseException:
            # A definitive refusal wrote nothing; a cancellation may have: release if held, and
            # stop tracking the request either way (the stray-hold sweep skips tracked ids).
            self._spawn(self._release_unknown(ctx.request_id, "plugin_failed"), f"release-unknown:{ctx.request_id}")
            raise
        self.money.hold_latency.observe(time.monotonic() - started)
        if isinstance(result, HoldRefusal):
            self._sweeper.done(ctx.request_id)
            raise refusal(result, estimate.quota, self.config.quota_per_usd)
        return result

    @property
    def tasks(self) -> TaskRequests:
        """Task billing's request side (bound at startup)."""
        if self._tasks_side is None:
            raise RuntimeError("billing plugin used before its lifespan started")
        return self._tasks_side

    def event_filter(self, ctx: RequestContext) -> EventFilter:
        """The relay keeps a billed stream's events on the meter's tape (read when the
        response ends, `plugins.billing.stream_meter`); `on_event` sees only the events that
        may be a usage chunk to hide, or none."""
        st = ctx.state.get(BILLING)
        if st is None:
            return _NO_EVENTS
        if st.hide_usage:
            return EventFilter(_USAGE_CHUNK, st.meter.tape, substring="usage")
        return EventFilter(None, st.meter.tape)

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> Drop | None:
        """Meter each event; drop the usage chunk the client did not ask for."""
        st = ctx.state.get(BILLING)
        if st is None:
            return None
        st.meter.see(event)  # read when the response ends (plugins.billing.stream_meter)
        if st.hide_usage and "usage" in event.data:
            payload = event.json
            if type(payload) is dict and payload.get("choices") == [] and payload.get("usage"):
                return DROP
        return None

    async def on_body(self, ctx: RequestContext, body: bytes) -> bytes | None:
        """Meter a non-streamed response body (unchanged); narrow `/v1/models` to the
        models the caller's key may use; swap a task answer's ids."""
        st = ctx.state.get(BILLING)
        if st is not None:  # a held request (task requests are not: they never get `BILLING`)
            try:
                st.meter.feed_body(orjson.loads(body))
            except orjson.JSONDecodeError:
                pass
            return None
        if self._tasks_side is not None and self._tasks_side.owns(ctx):
            return await self._tasks_side.on_body(ctx, body)
        if ctx.endpoint is _MODELS:
            allowed = ctx.state.get(MODEL_ALLOWLIST)
            return None if allowed is None else keep_allowed(body, allowed)
        return None

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Capture the charge the §6 table gives for this outcome (or release)."""
        st = ctx.state.get(BILLING)
        if st is None:
            if self._tasks_side is not None and self._tasks_side.owns(ctx):
                await self._tasks_side.on_complete(ctx, outcome)
            return
        self._live.done(ctx.request_id)
        channel_health.completed(self.pricing.health, ctx, outcome)
        reading = metered(st)
        if outcome.bytes_relayed and st.price.characters is not None:
            # Speech audio is relayed as bytes the meter never sees: delivered is delivered.
            reading = reading._replace(has_content=True)
        decision = settle(outcome.reason, reading, st.price, st.multiplier, self.config.quota_per_usd)
        details = log_details(
            ctx,
            st,
            _REASON_TEXT[outcome.reason],
            decision.usage_source,
            outcome.status,
            outcome.error or "",
            decision.usage,
        )
        assert self._settler is not None
        started = time.monotonic()
        resolution = await self._settler.capture(ctx.request_id, decision.charge, details)
        self.money.settled(details.model, details.group, resolution.charged, time.monotonic() - started)
        self._sweeper.done(ctx.request_id)

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        """Nothing was delivered: release the whole hold."""
        st = ctx.state.get(BILLING)
        if st is None:
            if self._tasks_side is not None and self._tasks_side.owns(ctx):
                await self._tasks_side.on_error(ctx, error)
            return
        self._live.done(ctx.request_id)
        channel_health.failed(self.pricing.health, ctx, error)
        details = log_details(ctx, st, _REASON_TEXT[error.reason], "none", error.status, error.message)
        assert self._settler is not None
        started = time.monotonic()
        await self._settler.release(ctx.request_id, details)
        self.money.settle_latency.observe(time.monotonic() - started)
        self.money.released(details.end_reason)
        self._sweeper.done(ctx.request_id)

    async def checkpoint_live(self) -> None:
        """Checkpoint the live requests older than `checkpoint_every` (`LiveRequests.checkpoint`)."""
        await self._live.checkpoint(self.store, self.config.checkpoint_every)

    async def _release_unknown(self, request_id: str, reason: str = "store_unavailable") -> None:
        """Release a hold that may not have been written (end reason `reason`); stop tracking it."""
        assert self._settler is not None
        try:
            # A refusal means the hold was never written: nothing to give back.
            details = LogDetails(end_reason=reason, usage_source="none")
            await self._settler.release_if_held(request_id, details)
        finally:
            self._sweeper.done(request_id)

    def _spawn(self, coro: Any, name: str) -> None:
        if self._tasks is not None:
            self._tasks.spawn(coro, name=name)
        else:
            coro.close()
