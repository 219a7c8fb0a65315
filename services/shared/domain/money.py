"""Money and billing-period arithmetic shared by the services that quote and charge: whole won, one
rounding rule (half up), calendar months in Korea Standard Time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

SECONDS_PER_HOUR = 3600
KST = timezone(timedelta(hours=9), "KST")


def round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def charge_krw(gpu_seconds: int, price_krw_per_gpu_hour: int) -> int:
    return round_half_up(gpu_seconds * price_krw_per_gpu_hour, SECONDS_PER_HOUR)


def period_of(moment: datetime) -> str:
    """The billing period (a calendar month in Korea Standard Time) a moment falls in."""
    return moment.astimezone(KST).strftime("%Y-%m")


def period_start(moment: datetime) -> datetime:
    """The first instant of the billing period the moment falls in."""
    local = moment.astimezone(KST)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def estimate_krw(gpu_count: int, expected_hours: float, price_krw_per_gpu_hour: int) -> int:
    """A run's expected charge at its GPU-hour price, the figure budgets are checked against."""
    return charge_krw(round(gpu_count * expected_hours * SECONDS_PER_HOUR), price_krw_per_gpu_hour)
