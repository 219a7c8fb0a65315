"""The simulated factory's usage plan: deterministic, consistent, bounded."""

from __future__ import annotations

import uuid
from itertools import pairwise

from contracts.events import JobKind
from services.factory_agent.simulation import (
    MAX_INTERVALS,
    failure_point,
    runtime_factor,
    usage_event_id,
    usage_intervals,
)

JOB = uuid.UUID("a88082c9-5863-54fc-94cc-9de3e44c284b")


def test_intervals_cover_the_run_without_gaps() -> None:
    intervals = usage_intervals(JOB, JobKind.TRAINING, 64, 6, 1.0, 1.2)
    assert [i.seq for i in intervals] == list(range(1, len(intervals) + 1))
    assert intervals[0].start_offset_s == 0
    for earlier, later in pairwise(intervals):
        assert earlier.end_offset_s == later.start_offset_s
    total_seconds = intervals[-1].end_offset_s
    assert sum(i.gpu_seconds for i in intervals) == total_seconds * 64
    assert 0.8 * 6 * 3600 <= total_seconds <= 6 * 3600


def test_same_job_same_usage() -> None:
    assert usage_intervals(JOB, JobKind.INFERENCE, 8, 30, 0.7, 1.3) == usage_intervals(
        JOB, JobKind.INFERENCE, 8, 30, 0.7, 1.3
    )
    assert usage_event_id(JOB, 1, 1) == usage_event_id(JOB, 1, 1) != usage_event_id(JOB, 1, 2)
    # A retried run reports its own intervals: never mistaken for the failed run's.
    assert usage_event_id(JOB, 2, 1) != usage_event_id(JOB, 1, 1)


def test_long_jobs_report_at_most_max_intervals() -> None:
    assert len(usage_intervals(JOB, JobKind.TRAINING, 1, 500, 1.0, 1.0)) == MAX_INTERVALS


def test_energy_and_tokens() -> None:
    [interval] = usage_intervals(JOB, JobKind.INFERENCE, 2, 0.5, 0.7, 1.5)
    assert interval.energy_wh == round(interval.gpu_seconds * 0.7 * 1.5 * 1000 / 3600)
    assert interval.input_tokens > 0 and interval.output_tokens > 0
    [training] = usage_intervals(JOB, JobKind.TRAINING, 2, 0.5, 0.7, 1.5)
    assert training.input_tokens == 0


def test_runtime_factor_range() -> None:
    factors = [runtime_factor(uuid.uuid4()) for _ in range(200)]
    assert all(0.8 <= f <= 1.0 for f in factors)


def test_failures_follow_the_rate_deterministically_and_stop_halfway() -> None:
    jobs = [uuid.uuid5(JOB, str(i)) for i in range(2000)]
    assert all(failure_point(j, 1, 0.0, 6) is None for j in jobs)
    assert all(failure_point(j, 1, 1.0, 6) == 3 for j in jobs)
    failing = [j for j in jobs if failure_point(j, 1, 0.25, 6) is not None]
    assert 400 < len(failing) < 600
    assert [failure_point(j, 1, 0.25, 6) for j in jobs] == [failure_point(j, 1, 0.25, 6) for j in jobs]
    # Each attempt draws anew: a retry of a failed run does not simply fail again.
    assert any(failure_point(j, 2, 0.25, 6) is None for j in failing)
    assert failure_point(JOB, 1, 1.0, 1) == 0  # a one-interval run fails before reporting anything
