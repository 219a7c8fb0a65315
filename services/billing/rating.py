"""Rating and ledger postings as pure integer arithmetic. Amounts are whole won (KRW has no minor unit).

One rounding rule everywhere: round half up to the whole won, applied to a cumulative quantity.
- A run's charge is round_half_up(gpu_seconds * price_per_gpu_hour / 3600), or for a token-priced
  inference run round_half_up((input_tokens * input_price + output_tokens * output_price) / 1e6), over its
  cumulative usage. Each usage interval is charged the difference of that rounding before and after it,
  so a run's intervals always add up to exactly its charge, in whatever order they arrive.
- The marketplace fee, an invoice's volume discount and its VAT (10 percent) are each rounded half up once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.shared.domain.catalogue import VolumeTier
from services.shared.domain.money import SECONDS_PER_HOUR, charge_krw, round_half_up

TOKENS_PER_MILLION = 1_000_000
BASIS_POINTS = 10_000
VAT_PERCENT = 10

RECEIVABLE = "receivable:tenant:{tenant_id}"
PAYABLE = "payable:site:{site_id}"
FEE_REVENUE = "revenue:marketplace-fee"
VOLUME_DISCOUNT = "expense:volume-discount"
VAT_PAYABLE = "payable:vat"


def next_period(period: str) -> str:
    year, month = (int(part) for part in period.split("-"))
    return f"{year + month // 12}-{month % 12 + 1:02d}"


@dataclass(frozen=True)
class Rate:
    """A run's prices, locked at placement. Token prices set: the run is billed per token."""

    price_krw_per_gpu_hour: int
    price_krw_per_million_input_tokens: int | None = None
    price_krw_per_million_output_tokens: int | None = None

    @property
    def per_token(self) -> bool:
        return (
            self.price_krw_per_million_input_tokens is not None
            and self.price_krw_per_million_output_tokens is not None
        )


@dataclass(frozen=True)
class Usage:
    gpu_seconds: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.gpu_seconds + other.gpu_seconds,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )


def run_charge_krw(usage: Usage, rate: Rate) -> int:
    """The whole charge for a run's cumulative usage."""
    if rate.per_token:
        assert rate.price_krw_per_million_input_tokens and rate.price_krw_per_million_output_tokens
        return round_half_up(
            usage.input_tokens * rate.price_krw_per_million_input_tokens
            + usage.output_tokens * rate.price_krw_per_million_output_tokens,
            TOKENS_PER_MILLION,
        )
    return charge_krw(usage.gpu_seconds, rate.price_krw_per_gpu_hour)


def interval_charge_krw(before: Usage, interval: Usage, rate: Rate) -> int:
    return run_charge_krw(before + interval, rate) - run_charge_krw(before, rate)


def fee_krw(amount_krw: int, fee_bps: int) -> int:
    """The marketplace's share, rounded half up."""
    return round_half_up(amount_krw * fee_bps, BASIS_POINTS)


def vat_krw(net_krw: int) -> int:
    return round_half_up(net_krw * VAT_PERCENT, 100)


def volume_discount_krw(gpu_hour_amount_krw: int, gpu_seconds: int, tiers: Sequence[VolumeTier]) -> int:
    """Graduated tiers over a period's GPU-hours: each band's GPU-seconds earn that band's discount, and
    the blended rate applies to the period's GPU-hour charges. Depends only on the totals, so never on
    the order usage arrived in."""
    if not tiers or gpu_seconds == 0:
        return 0
    weighted = 0  # sum over bands of (GPU-seconds in the band) * (its discount in basis points)
    floor = 0
    for tier in tiers:
        ceiling = gpu_seconds if tier.up_to_gpu_hours is None else tier.up_to_gpu_hours * SECONDS_PER_HOUR
        in_band = max(0, min(gpu_seconds, ceiling) - floor)
        weighted += in_band * tier.discount_bps
        floor = max(floor, ceiling)
        if floor >= gpu_seconds:
            break
    return round_half_up(gpu_hour_amount_krw * weighted, gpu_seconds * BASIS_POINTS)


@dataclass(frozen=True)
class Posting:
    account: str
    amount_krw: int  # debit positive, credit negative


def postings_for(amount_krw: int, fee_bps: int, tenant_id: str, site_id: str) -> list[Posting]:
    """One balanced transaction: the tenant owes the amount, the site is owed it less the marketplace fee."""
    fee = fee_krw(amount_krw, fee_bps)
    return [
        Posting(RECEIVABLE.format(tenant_id=tenant_id), amount_krw),
        Posting(PAYABLE.format(site_id=site_id), -(amount_krw - fee)),
        Posting(FEE_REVENUE, -fee),
    ]


def invoice_postings(tenant_id: str, discount_krw: int, vat: int) -> list[Posting]:
    """At issue: the marketplace bears the volume discount; VAT is owed by the tenant to the tax office."""
    receivable = RECEIVABLE.format(tenant_id=tenant_id)
    return [
        Posting(VOLUME_DISCOUNT, discount_krw),
        Posting(receivable, -discount_krw),
        Posting(receivable, vat),
        Posting(VAT_PAYABLE, -vat),
    ]
