"""Billing's arithmetic: whole-won rounding, per-interval shares that add up, balanced postings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.billing.rating import charge_krw, fee_krw, interval_charge_krw, postings_for


def test_round_half_up_to_whole_won() -> None:
    assert charge_krw(3600, 7600) == 7600
    assert charge_krw(1, 1800) == 1  # 0.5 won rounds up
    assert charge_krw(1, 1799) == 0  # 0.4997 won rounds down
    assert charge_krw(1_325_312, 7600) == 2_797_881  # 2,797,880.89


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=50_000),
)
def test_interval_shares_sum_to_the_job_charge(intervals: list[int], price: int) -> None:
    before = 0
    total = 0
    for gpu_seconds in intervals:
        total += interval_charge_krw(before, gpu_seconds, price)
        before += gpu_seconds
    assert total == charge_krw(sum(intervals), price)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10_000))
def test_postings_balance(amount: int, fee_bps: int) -> None:
    postings = postings_for(amount, fee_bps, "t", "s")
    assert sum(p.amount_krw for p in postings) == 0
    assert postings[0].amount_krw == amount
    assert -postings[2].amount_krw == fee_krw(amount, fee_bps)


def test_fee_rounding() -> None:
    assert fee_krw(10_000, 500) == 500
    assert fee_krw(10, 500) == 1  # 0.5 rounds up
    assert fee_krw(9, 500) == 0
