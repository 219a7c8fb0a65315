"""Billing's arithmetic: whole-won rounding, per-interval shares that add up, tokens, tiers, VAT, periods
and balanced postings."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.billing.rating import (
    Rate,
    Usage,
    fee_krw,
    interval_charge_krw,
    invoice_postings,
    next_period,
    postings_for,
    run_charge_krw,
    vat_krw,
    volume_discount_krw,
)
from services.shared.domain.catalogue import VolumeTier
from services.shared.domain.money import charge_krw, period_of

TIERS = [
    VolumeTier(up_to_gpu_hours=1000, discount_bps=0),
    VolumeTier(up_to_gpu_hours=10_000, discount_bps=500),
    VolumeTier(discount_bps=1000),
]


def test_round_half_up_to_whole_won() -> None:
    assert charge_krw(3600, 7600) == 7600
    assert charge_krw(1, 1800) == 1  # 0.5 won rounds up
    assert charge_krw(1, 1799) == 0  # 0.4997 won rounds down
    assert charge_krw(1_325_312, 7600) == 2_797_881  # 2,797,880.89


def test_token_pricing_per_million() -> None:
    rate = Rate(4300, price_krw_per_million_input_tokens=300, price_krw_per_million_output_tokens=1500)
    assert rate.per_token and not Rate(4300).per_token
    # 7.2 M input at 300 + 1.44 M output at 1,500 = 2,160 + 2,160
    assert run_charge_krw(Usage(3600, 7_200_000, 1_440_000), rate) == 4320
    assert run_charge_krw(Usage(3600, 1, 1), rate) == 0  # 0.0018 won
    assert run_charge_krw(Usage(3600, 7_200_000, 1_440_000), Rate(4300)) == 4300  # GPU-hour pricing


usages = st.builds(
    Usage,
    st.integers(min_value=0, max_value=10**8),
    st.integers(min_value=0, max_value=10**10),
    st.integers(min_value=0, max_value=10**10),
)
rates = st.one_of(
    st.builds(Rate, st.integers(min_value=1, max_value=50_000)),
    st.builds(Rate, st.integers(min_value=1, max_value=50_000), st.integers(1, 5000), st.integers(1, 5000)),
)


@given(st.lists(usages, min_size=1, max_size=20), rates)
def test_interval_shares_sum_to_the_run_charge(intervals: list[Usage], rate: Rate) -> None:
    before = Usage()
    total = 0
    for usage in intervals:
        total += interval_charge_krw(before, usage, rate)
        before = before + usage
    assert total == run_charge_krw(before, rate)


def test_graduated_volume_discount() -> None:
    hours = 3600
    assert volume_discount_krw(1_000_000, 500 * hours, TIERS) == 0  # all in the first band
    # 2,000 GPU-hours: 1,000 at 0 and 1,000 at 5 percent -> a blended 2.5 percent
    assert volume_discount_krw(1_000_000, 2000 * hours, TIERS) == 25_000
    # 20,000 GPU-hours: 1,000 at 0, 9,000 at 5, 10,000 at 10 percent -> 7.25 percent
    assert volume_discount_krw(2_000_000, 20_000 * hours, TIERS) == 145_000
    assert volume_discount_krw(1_000_000, 0, TIERS) == 0
    assert volume_discount_krw(1_000_000, 2000 * hours, []) == 0


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=10**9))
def test_a_discount_never_exceeds_the_top_band_rate(amount: int, gpu_seconds: int) -> None:
    assert 0 <= volume_discount_krw(amount, gpu_seconds, TIERS) <= (amount + 10) // 10


def test_vat_and_periods() -> None:
    assert vat_krw(1_234_565) == 123_457  # 123,456.5 rounds up
    assert period_of(datetime(2027, 1, 31, 15, 0, tzinfo=UTC)) == "2027-02"  # already February in Seoul
    assert period_of(datetime(2027, 1, 31, 14, 59, tzinfo=UTC)) == "2027-01"
    assert next_period("2027-12") == "2028-01" and next_period("2027-01") == "2027-02"


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10_000))
def test_postings_balance(amount: int, fee_bps: int) -> None:
    postings = postings_for(amount, fee_bps, "t", "s")
    assert sum(p.amount_krw for p in postings) == 0
    assert postings[0].amount_krw == amount
    assert -postings[2].amount_krw == fee_krw(amount, fee_bps)
    assert sum(p.amount_krw for p in invoice_postings("t", amount // 7, amount // 10)) == 0


def test_fee_rounding() -> None:
    assert fee_krw(10_000, 500) == 500
    assert fee_krw(10, 500) == 1  # 0.5 rounds up
    assert fee_krw(9, 500) == 0
