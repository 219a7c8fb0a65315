"""Rating and ledger postings as pure integer arithmetic. Amounts are whole won (KRW has no minor unit).

Rounding rule: a job's charge is round-half-up(gpu_seconds * price_per_gpu_hour / 3600) over its cumulative
GPU-seconds. Each usage interval is charged the difference of that rounding before and after it, so the
intervals' amounts always add up to exactly the job's charge, whatever their count.
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_HOUR = 3600
BASIS_POINTS = 10_000

RECEIVABLE = "receivable:tenant:{tenant_id}"
PAYABLE = "payable:site:{site_id}"
FEE_REVENUE = "revenue:marketplace-fee"


def charge_krw(gpu_seconds: int, price_krw_per_gpu_hour: int) -> int:
    return (2 * gpu_seconds * price_krw_per_gpu_hour + SECONDS_PER_HOUR) // (2 * SECONDS_PER_HOUR)


def interval_charge_krw(gpu_seconds_before: int, gpu_seconds: int, price_krw_per_gpu_hour: int) -> int:
    return charge_krw(gpu_seconds_before + gpu_seconds, price_krw_per_gpu_hour) - charge_krw(
        gpu_seconds_before, price_krw_per_gpu_hour
    )


def fee_krw(amount_krw: int, fee_bps: int) -> int:
    """The marketplace's share, rounded half up."""
    return (2 * amount_krw * fee_bps + BASIS_POINTS) // (2 * BASIS_POINTS)


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
