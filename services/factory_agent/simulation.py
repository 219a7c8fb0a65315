"""What a simulated AI factory reports for a job: pure and deterministic from the job, so a restart or a
second agent reproduces exactly the same usage intervals (and the same event ids)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from contracts.events import JobKind

MAX_INTERVALS = 6
USAGE_NAMESPACE = uuid.UUID("0b7c5d1e-3f42-4a8e-9d6b-51c2e8f7a903")
# Illustrative inference throughput per GPU-second, for token counts.
INPUT_TOKENS_PER_GPU_SECOND = 2_000
OUTPUT_TOKENS_PER_GPU_SECOND = 400


@dataclass(frozen=True)
class UsageInterval:
    seq: int
    start_offset_s: int
    end_offset_s: int
    gpu_seconds: int
    energy_wh: int
    input_tokens: int
    output_tokens: int


def runtime_factor(job_id: uuid.UUID) -> float:
    """Jobs finish at 80-100 percent of their expected time, varying by job but fixed for each."""
    return 0.80 + (int(job_id.hex[:8], 16) % 2001) / 10_000


def energy_wh(gpu_seconds: int, power_kw_per_gpu: float, pue: float) -> int:
    """The site's power model: its GPUs' draw times the facility's PUE, in whole watt-hours."""
    return round(gpu_seconds * power_kw_per_gpu * pue * 1000 / 3600)


def usage_intervals(
    job_id: uuid.UUID,
    kind: JobKind,
    gpu_count: int,
    expected_hours: float,
    power_kw_per_gpu: float,
    pue: float,
) -> list[UsageInterval]:
    total_seconds = max(60, round(expected_hours * 3600 * runtime_factor(job_id)))
    count = min(MAX_INTERVALS, max(1, math.ceil(total_seconds / 3600)))
    bounds = [total_seconds * i // count for i in range(count + 1)]
    intervals = []
    for index in range(count):
        gpu_seconds = (bounds[index + 1] - bounds[index]) * gpu_count
        inference = kind is JobKind.INFERENCE
        intervals.append(
            UsageInterval(
                seq=index + 1,
                start_offset_s=bounds[index],
                end_offset_s=bounds[index + 1],
                gpu_seconds=gpu_seconds,
                energy_wh=energy_wh(gpu_seconds, power_kw_per_gpu, pue),
                input_tokens=gpu_seconds * INPUT_TOKENS_PER_GPU_SECOND if inference else 0,
                output_tokens=gpu_seconds * OUTPUT_TOKENS_PER_GPU_SECOND if inference else 0,
            )
        )
    return intervals


def usage_event_id(job_id: uuid.UUID, attempt: int, seq: int) -> uuid.UUID:
    return uuid.uuid5(USAGE_NAMESPACE, f"{job_id}/{attempt}/{seq}")


def failure_point(job_id: uuid.UUID, attempt: int, failure_rate: float, interval_count: int) -> int | None:
    """How many intervals a run completes before it fails, or None if it succeeds. A failing run fails
    during the interval after its half-way point; that interval is never reported, so never billed.
    Deterministic per (job, attempt), so a restarted agent fails the same runs at the same point."""
    draw = int(uuid.uuid5(USAGE_NAMESPACE, f"{job_id}/{attempt}/fails").hex[:8], 16) / 0x1_0000_0000
    return interval_count // 2 if draw < failure_rate else None
