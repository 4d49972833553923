"""The validated, immutable policy: what `tollway.policy.load` returns.

Every object here is frozen. Values are already resolved: a limit's timezone and failure mode
are filled in from the policy defaults, so the engine never looks anything up twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from tollway.events import USAGE_RECORDED
from tollway.money import Money
from tollway.policy.charges import Charge

Period = Literal["minute", "hour", "day", "week", "month"]
LimitKind = Literal["rate", "quota", "budget", "credits"]
OnError = Literal["open", "closed"]
Per = Literal["subject", "operation"]

PERIODS: tuple[Period, ...] = ("minute", "hour", "day", "week", "month")


@dataclass(frozen=True, slots=True)
class Rate:
    """A GCRA rate: ``count`` units per ``period_us`` microseconds (``"5/s"``)."""

    count: int
    period_us: int
    text: str

    @property
    def emission_us(self) -> int:
        """Microseconds between two units, rounded up so the rate never exceeds its text."""
        return -(-self.period_us // self.count)


@dataclass(frozen=True, slots=True)
class Quota:
    """``count`` units of cost per calendar ``period`` (``"1000/hour"``)."""

    count: int
    period: Period
    text: str


@dataclass(frozen=True, slots=True)
class Budget:
    """An amount of money per calendar ``period`` (``"50.00 USD/day"``)."""

    amount: Money
    period: Period
    text: str


@dataclass(frozen=True, slots=True)
class Grace:
    """A soft allowance past a quota or budget: a fraction of it, or an absolute count."""

    fraction: Decimal | None = None
    units: int | None = None
    text: str = ""

    def extra(self, base: int) -> int:
        """Units (or micro-units) allowed past ``base``; a fraction rounds down."""
        if self.units is not None:
            return self.units
        assert self.fraction is not None
        return int(base * self.fraction)


@dataclass(frozen=True, slots=True)
class Limit:
    """One rule on one counter: exactly one of ``rate``, ``quota``, ``budget``, ``credits``
    is set."""

    name: str
    kind: LimitKind
    path: str
    """Where the limit was declared, e.g. ``plans.free.limits[0]``."""
    rate: Rate | None = None
    burst: int | None = None
    """GCRA burst: units that may pass at once; defaults to the rate's count."""
    quota: Quota | None = None
    budget: Budget | None = None
    timezone: str = "UTC"
    anchor: int | None = None
    """Day of the month (1-31) a monthly window starts on; 31 clamps to the month's last day."""
    grace: Grace | None = None
    thresholds: tuple[Decimal, ...] = ()
    """Fractions of the limit (0 < t <= 1, or beyond 1 into grace) that raise a crossing."""
    on_error: OnError = "open"
    shadow: bool = False
    operations: tuple[str, ...] | None = None
    """The operations the limit applies to; ``None`` means all of them."""
    per: Per = "subject"
    credits: str | None = None
    """A prepaid balance in this currency (``{ credits = "USD" }``): each step draws its price
    from the subject's grants (`tollway.billing`), denied when they cannot cover it."""
    overage: bool = False
    """``credits`` only: when the balance cannot cover a step, allow it and bill it on the
    invoice instead of denying it (nothing is drawn for it)."""

    @property
    def period(self) -> Period | None:
        if self.quota is not None:
            return self.quota.period
        if self.budget is not None:
            return self.budget.period
        return None

    @property
    def currency(self) -> str | None:
        if self.budget is not None:
            return self.budget.amount.currency
        return self.credits

    def applies_to(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


@dataclass(frozen=True, slots=True)
class Operation:
    """A named kind of call, its default cost in units, and its price per unit."""

    name: str
    cost: int = 1
    price: Money | None = None
    endpoints: tuple[str, ...] = ()
    explicit_amount: bool = False
    """``price = "explicit"``: no price in the policy; every call gives its money (``amount=``
    at acquire, reserve or commit), so a budget may count it."""


FeeTiming = Literal["advance", "arrears"]


@dataclass(frozen=True, slots=True)
class Fee:
    """A plan's recurring fee per billing period, prorated to the second on changes."""

    amount: Money
    timing: FeeTiming = "arrears"
    """``advance``: billed for the period ahead; ``arrears``: for the period just ended."""


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    limits: tuple[Limit, ...]
    fee: Fee | None = None
    trial_days: int = 0
    """Days of a trial (``assign(..., trial=True)``): the plan's limits, no fee."""
    trial_then: str | None = None
    """The plan a trial continues on when it ends (None: this plan)."""
    charges: tuple[Charge, ...] = ()
    """What its meters cost (each `Charge` names its ``meter``); a meter without a charge is
    free on this plan."""
    path: str = ""
    """Where the plan was declared, e.g. ``plans.pro``."""


CouponDuration = Literal["once", "forever"] | int
"""``once``: the first period; N: N periods from the redemption; ``forever``."""


@dataclass(frozen=True, slots=True)
class Coupon:
    """One ``[coupons.CODE]``: a discount a subject may redeem (`tollway.billing`)."""

    code: str
    percent: Decimal | None = None
    """A percentage (0 < p <= 100) off the lines it applies to; or ``amount``."""
    amount: Money | None = None
    """A fixed amount off per period, never taking a line below zero."""
    duration: CouponDuration = "once"
    applies_to: tuple[str, ...] = ("fee", "charges")
    """``fee`` (plan fees), ``charges`` (every usage charge), or meter names."""
    max_redemptions: int | None = None
    """How many subjects may redeem it in all (None: no cap)."""
    path: str = ""


BillingPeriod = Literal["day", "week", "month"]
BillingAnchor = Literal["calendar", "subscription"]


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """``[billing]``: how periods are cut, invoiced and numbered."""

    currency: str = "USD"
    period: BillingPeriod = "month"
    anchor: BillingAnchor = "calendar"
    """``calendar``: periods in ``timezone``; ``subscription``: from each subject's first
    assignment to a plan with a fee (its day of the month, 31 clamping)."""
    timezone: str = "UTC"
    """The timezone periods are cut in (``[defaults] timezone`` unless given)."""
    invoice_grace_s: int = 3600
    """How long after its end a period's draft stays open for late events."""
    numbering: str = "INV-{year}-{seq:06d}"
    """Invoice numbers, gapless per issuer: ``{year}`` and ``{seq}`` (``{seq:06d}``)."""
    credit_note_numbering: str = "CN-{year}-{seq:06d}"
    issuer: str = ""
    """The issuer's name on invoices (and the scope of the numbering)."""
    meters: tuple[str, ...] = ()
    """Meters recorded with `Tollway.record` that charges may price, besides operations."""


@dataclass(frozen=True, slots=True)
class PriceTier:
    """One step of a tiered price list: ``micros`` per unit for the units of the month up to
    ``upto`` (None: every unit past the previous tier)."""

    upto: int | None
    micros: int
    text: str


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """When errors open a provider's circuit breaker, and for how long."""

    breaker_errors: int = 5
    """Errors within ``breaker_window_ms`` that open the breaker."""
    breaker_window_ms: int = 60_000
    breaker_open_ms: int = 30_000
    """How long an open breaker skips the provider before one half-open probe."""
    probe_ms: int = 10_000
    """How long a half-open probe holds the others back before another may try."""


@dataclass(frozen=True, slots=True)
class ProviderClient:
    """How to reach the provider, for the adapters that call it (geocoders)."""

    kind: str | None = None
    """The adapter: ``google``, ``here``, ``opencage``, ``nominatim``, ``mapbox``..."""
    api_key_env: str | None = None
    """The environment variable holding its key (keys are never written in the file)."""
    domain: str | None = None
    scheme: str = "https"
    timeout_ms: int = 10_000
    stores_results: bool | None = None
    """Whether its terms allow keeping results (None: the adapter's default)."""


@dataclass(frozen=True, slots=True)
class Provider:
    """A paid API the service itself calls: a subject of its own, with a price and limits."""

    name: str
    price: Money | None
    limits: tuple[Limit, ...]
    timezone: str = "UTC"
    """The provider's billing timezone: its days end at its own midnight."""
    health: ProviderHealth = field(default_factory=ProviderHealth)
    weight: int = 1
    """Its share of calls under a route's ``weighted`` strategy."""
    client: ProviderClient = field(default_factory=ProviderClient)
    tiers: tuple[PriceTier, ...] = ()
    """A tiered price list per calendar month in the provider's timezone (``price`` is then
    its dearest tier, what a reservation holds until the commit knows the tier)."""
    explicit_amount: bool = False
    """``price = "explicit"``: every call gives its money (``amount=``), so a budget may count
    it without a price."""


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """An ordered chain of providers for one kind of outbound call."""

    name: str
    providers: tuple[str, ...]
    strategy: Literal["priority", "cheapest", "weighted"] = "priority"


@dataclass(frozen=True, slots=True)
class Defaults:
    plan: str | None = None
    """The plan of subjects never assigned one; ``None`` refuses unassigned subjects."""
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = "memory://"
    timeout_ms: int = 50
    on_error: OnError = "open"
    journal: str | None = None
    """Folder for the fail-open journal; ``None`` picks one under the user's state folder."""
    breaker_failures: int = 3
    """Consecutive store failures that open the circuit breaker."""
    breaker_cooldown_ms: int = 1000
    """How long an open breaker skips the store before one probe call."""
    hold_ttl_ms: int = 60_000
    """How long an unsettled reservation holds capacity before it is released by itself."""
    prefix: str = ""
    """Put before every Redis key (``acme`` → ``acme:tw:{SUBJECT}``), so deployments sharing
    a Redis do not see each other's keys; "" (the default): keys as they always were."""


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Where usage events are kept (``[ledger]``); no url: no ledger."""

    url: str | None = None
    """``sqlite:///tollway.db`` or ``postgresql://user@host:5432/db``."""
    lateness_s: int = 86_400
    """How old a usage event measured elsewhere may be when `Tollway.record` takes it."""
    events: bool = True
    """Whether each allowed step appends its usage event (a url is needed too)."""
    partitions: int = 16
    """Stream partitions on a standalone Redis (a cluster has one per hash slot in use)."""
    dedupe_s: int = 86_400
    """How long the store remembers a caller's request id, so a retried step is not counted
    again."""
    max_repeats: int = 2
    """How many times a request id taken by an acquire may be repeated within ``dedupe_s``
    (each repeat is not counted against quotas or budgets, but takes rate-limit capacity);
    the next repeat is refused (``Decision.refused == "repeats"``)."""
    flush_ms: int = 200
    """Embedded (memory store): how often the background thread writes queued events."""
    batch: int = 1000
    """Most events written to the ledger in one transaction."""
    sensitive: tuple[str, ...] = ()
    """Event attributes encrypted in the ledger (AES-GCM, `tollway.metering.ledger.sealing`)."""
    encryption_key_env: str | None = None
    """The environment variable holding the key (base64 of 32 bytes); never the key itself."""
    encryption_keys_env: str | None = None
    """Or: the variable holding several keys, space-separated, newest first (a rotation: new
    rows are sealed with the first, old rows open with whichever sealed them)."""


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """How the HTTP faces guard API keys (``[keys]``)."""

    failed_attempts: Quota | None = Quota(20, "minute", "20/minute")
    """Failed API-key attempts (each a 401) allowed per client address per calendar window;
    past it, that address's key attempts are answered 429 until the window ends. ``None``
    (``failed_attempts = false``): not limited."""


_SUPPORT_GRANT_MAX = Money(50_000_000, "USD")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The control plane's settings (``[admin]``; `tollway.admin`)."""

    support_grant_max: Money = _SUPPORT_GRANT_MAX
    """The largest credit grant a ``support`` token may make at once."""
    token_ttl_s: int = 90 * 86_400
    """How long a new admin token lives unless its creator says otherwise."""
    rate: Rate = Rate(20, 1_000_000, "20/s")
    """The admin API's rate per token (the server limits itself with tollway)."""
    sessions_ttl_s: int = 12 * 3600
    """How long a dashboard login lasts."""


HookAggregate = Literal["none", "minute", "hour"]
HookKind = Literal["url", "callable", "stream"]


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One ``[[hooks]]`` entry: where events go (exactly one of ``url``, ``callable``,
    ``stream``), which types, and how they are delivered."""

    name: str
    kind: HookKind
    path: str = ""
    """Where the hook was declared, e.g. ``hooks[0]`` (errors at run time name it)."""
    url: str | None = None
    """An http(s) URL: a Standard Webhooks POST, signed with the secret(s) in ``secret_env``."""
    callable: str | None = None
    """``package.module:function``, imported when a dispatcher starts (not when parsed)."""
    stream: str | None = None
    """A Redis Stream key, XADDed to on ``stream_url``."""
    stream_url: str | None = None
    """The Redis of ``stream``; the policy's ``[store] url`` when not given."""
    secret_env: str | None = None
    """The environment variable holding the ``whsec_`` secret (several, space-separated, while
    one is rotated). Secrets are never written in the file."""
    events: tuple[str, ...] = (USAGE_RECORDED,)
    aggregate: HookAggregate = "none"
    """``minute`` / ``hour``: one usage event per subject and meter per bucket, summed."""
    timeout_ms: int = 5_000
    """One attempt in all (connect, send, the whole answer); past it the attempt failed."""
    schedule: tuple[float, ...] | None = None
    """Delays before each attempt, in seconds; None: the Standard Webhooks schedule."""
    batch: int = 1
    """Most events in one message; above 1 a message is a CloudEvents batch."""
    allow_http: bool = False
    """Allow plain ``http://`` to a host that is not loopback (`tollway.netrules`)."""
    allow_private: bool = False
    """Allow private, link-local, unique-local... addresses (checked once resolved)."""

    @property
    def target(self) -> str:
        return self.url or self.callable or f"redis-stream:{self.stream}"


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole validated policy document."""

    store: StoreConfig = field(default_factory=StoreConfig)
    defaults: Defaults = field(default_factory=Defaults)
    operations: Mapping[str, Operation] = field(default_factory=dict)
    plans: Mapping[str, Plan] = field(default_factory=dict)
    providers: Mapping[str, Provider] = field(default_factory=dict)
    routes: Mapping[str, RouteSpec] = field(default_factory=dict)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    hooks: tuple[HookConfig, ...] = ()
    """The ``[[hooks]]``: where usage events and limit notices are delivered."""
    keys: KeysConfig = field(default_factory=KeysConfig)
    billing: BillingConfig | None = None
    """``[billing]``; None when the policy has no such section (no invoicing)."""
    coupons: Mapping[str, Coupon] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    """``[admin]``: the control plane's token lifetime, support grant cap and rate."""
    source: str | None = None
    """The file the policy was loaded from, if any."""
    version: str = ""
    """A short digest of the document, so events can say which policy decided them."""
