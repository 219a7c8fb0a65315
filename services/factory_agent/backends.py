"""What runs a placed job at a site: a small port, one adapter per kind of scheduler. The factory agent's
protocol (offers, claiming jobs.placed, signing, jobs.started, usage.reported, jobs.completed, cancels) is
handlers.py's, the same for every backend; a backend only starts and stops runs and says how they go.
Adding one (Kubernetes, say) is a module with a class like these and a value of BackendKind."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

from contracts.events import JobKind
from services.factory_agent.simulation import UsageInterval, failure_point, usage_intervals
from services.factory_agent.slurm import (
    RUN_END,
    SlurmCluster,
    SlurmError,
    SlurmRefused,
    Submission,
    accounted_intervals,
)
from services.factory_agent.storage import RunRow
from services.shared.db import as_utc

# A Slurm job may run this much longer than the job's expected time before Slurm stops it (TIMEOUT).
TIME_LIMIT_MARGIN = 1.5


class RunRefused(Exception):
    """The backend will never run this run (its message says why): it ends failed, to be retried elsewhere."""


class BackendUnavailable(Exception):
    """The backend could not be asked (its scheduler down, say): the run is handed over at a later pass."""


class BackendKind(StrEnum):
    SIMULATION = "simulation"
    SLURM = "slurm"


@dataclass(frozen=True)
class RunReport:
    """How a run goes, as its backend sees it: started or not, every usage interval closed so far (in order;
    each report repeats the earlier ones), and once it has ended how and why."""

    started: bool
    intervals: tuple[UsageInterval, ...] = ()
    status: Literal["succeeded", "failed", "cancelled"] | None = None
    reason: str | None = None
    # When the run began, which the intervals' offsets count from (None: when it was accepted here).
    began: datetime | None = None


class FactoryBackend(Protocol):
    async def submit(self, run: RunRow) -> str | None:
        """Hand the run over (at most once, however often asked); returns the backend's id for it. Raises
        RunRefused or BackendUnavailable."""

    async def cancel(self, run: RunRow) -> None:
        """Stop a submitted run; its report then ends it as cancelled."""

    async def report(self, runs: Sequence[RunRow], now: datetime) -> dict[str, RunReport]:
        """The runs' reports, by run id; a run the backend cannot say anything of yet is absent."""

    async def capacity(self) -> dict[str, int] | None:
        """GPUs each pool can take jobs on now, or None where the offer's sizes stand."""


class SimulatedBackend:
    """The simulated factory (simulation.py): a run starts when handed over and goes by scaled time."""

    def __init__(self, time_scale: float, failure_rates: Mapping[str, float]) -> None:
        self._time_scale = time_scale
        self._failure_rates = failure_rates

    async def submit(self, run: RunRow) -> str | None:
        return None

    async def cancel(self, run: RunRow) -> None:
        return None

    async def report(self, runs: Sequence[RunRow], now: datetime) -> dict[str, RunReport]:
        return {run.run_id: self.report_now(run, now) for run in runs}

    def report_now(self, run: RunRow, now: datetime) -> RunReport:
        job_id = uuid.UUID(run.job_id)
        intervals = usage_intervals(
            job_id, JobKind(run.kind), run.gpu_count, run.expected_hours, run.power_kw_per_gpu, run.pue
        )
        fails_after = failure_point(
            job_id, run.attempt, self._failure_rates.get(run.site_id, 0.0), len(intervals)
        )
        reportable = intervals if fails_after is None else intervals[:fails_after]
        if run.cancel_requested:
            # Stopped after its last reported interval: usage until then stands.
            return RunReport(True, tuple(reportable[: run.next_seq - 1]), "cancelled")
        elapsed = (now - as_utc(run.started_at)).total_seconds() * self._time_scale
        # A run ends when its last interval does; a failing one when the interval it fails in would have.
        if intervals[-1 if fails_after is None else fails_after].end_offset_s <= elapsed:
            if fails_after is None:
                return RunReport(True, tuple(reportable), "succeeded")
            return RunReport(True, tuple(reportable), "failed", f"simulated hardware fault at {run.site_id}")
        return RunReport(True, tuple(i for i in reportable if i.end_offset_s <= elapsed))

    async def capacity(self) -> dict[str, int] | None:
        return None


class SlurmBackend:
    """A Slurm cluster (slurm.py): each pool is a partition; what runs is the launch script of the job's
    kind, for the job's length in scaled time; usage is Slurm's accounting, in intervals of
    `interval_seconds` of real time."""

    def __init__(
        self,
        cluster: SlurmCluster,
        partitions: Mapping[str, str],
        launch_scripts: Mapping[str, Path],
        time_scale: float,
        interval_seconds: int,
    ) -> None:
        self._cluster = cluster
        self._partitions = partitions
        self._launch_scripts = launch_scripts
        self._time_scale = time_scale
        self._interval_seconds = interval_seconds

    async def submit(self, run: RunRow) -> str | None:
        run_seconds = max(1, round(run.expected_hours * 3600 / self._time_scale))
        with as_backend_errors():
            return await self._cluster.submit(
                Submission(
                    run_id=run.run_id,
                    job_id=run.job_id,
                    tenant_id=run.tenant_id,
                    kind=run.kind,
                    partition=self._partitions[run.pool_id],
                    gpu_count=run.gpu_count,
                    priority=run.priority,
                    time_limit_minutes=max(1, math.ceil(run_seconds * TIME_LIMIT_MARGIN / 60)),
                    deadline=as_utc(run.deadline) if run.deadline else None,
                    run_seconds=run_seconds,
                    launch_script=self._launch_scripts[run.kind],
                )
            )

    async def cancel(self, run: RunRow) -> None:
        if run.backend_ref is not None:
            with as_backend_errors():
                await self._cluster.cancel(run.backend_ref)

    async def report(self, runs: Sequence[RunRow], now: datetime) -> dict[str, RunReport]:
        with as_backend_errors():
            jobs = await self._cluster.jobs([run.backend_ref for run in runs if run.backend_ref])
        reports = {}
        for run in runs:
            job = jobs.get(run.backend_ref or "")
            if job is None:
                continue
            intervals = accounted_intervals(job, self._interval_seconds, run.power_kw_per_gpu, run.pue)
            status = RUN_END.get(job.state)
            reason = job.why_it_ended() if status not in (None, "succeeded") else None
            reports[run.run_id] = RunReport(job.started, tuple(intervals), status, reason, job.start)
        return reports

    async def capacity(self) -> dict[str, int] | None:
        with as_backend_errors():
            by_partition = await self._cluster.gpus_by_partition()
        return {pool: by_partition.get(partition, 0) for pool, partition in self._partitions.items()}


@contextmanager
def as_backend_errors() -> Iterator[None]:
    """Slurm's errors as the port's: a job sbatch refused is refused for good; any other failed or
    unanswered command means the cluster cannot be asked just now."""
    try:
        yield
    except SlurmRefused as refusal:
        raise RunRefused(str(refusal)) from refusal
    except SlurmError as error:
        raise BackendUnavailable(str(error)) from error
