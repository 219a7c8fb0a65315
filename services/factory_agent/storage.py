"""The factory agent's runs: one row per placed run of a job, advanced one usage interval at a time."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Table, bindparam, update
from sqlmodel import Field, Session, SQLModel, select

from services.shared.db import table_of, utc_now


class RunState(StrEnum):
    """A run at this factory: running until it completes, fails or is cancelled, each an end."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"

    run_id: str = Field(primary_key=True, max_length=48)  # run_key(job_id, attempt)
    job_id: str = Field(index=True, max_length=36)
    attempt: int = 1
    tenant_id: str = Field(max_length=64)
    site_id: str = Field(max_length=64)
    pool_id: str = Field(max_length=64)
    kind: str
    gpu_count: int
    expected_hours: float
    power_kw_per_gpu: float
    pue: float
    state: str = Field(default=RunState.RUNNING, index=True)
    next_seq: int = 1
    started_at: datetime = Field(default_factory=utc_now)
    priority: str = Field(default="normal", max_length=16)
    deadline: datetime | None = None
    # What the backend was asked and has said: the run handed to it (with its own id for it, a Slurm job's),
    # jobs.started reported, a cancel asked for and passed on.
    submitted: bool = False
    backend_ref: str | None = Field(default=None, max_length=64)
    started_reported: bool = False
    cancel_requested: bool = False
    cancel_sent: bool = False


class CancelledJob(SQLModel, table=True):
    """A cancel that reached the factory before the placement did: the run must never start."""

    __tablename__ = "cancelled_jobs"

    job_id: str = Field(primary_key=True, max_length=36)


TABLES: list[Table] = [table_of(RunRow), table_of(CancelledJob)]


def run_key(job_id: str, attempt: int) -> str:
    return f"{job_id}/{attempt}"


def running_run(session: Session, job_id: str) -> RunRow | None:
    """The job's run in progress here, if any (earlier attempts have ended)."""
    query = select(RunRow).where(RunRow.job_id == job_id).where(RunRow.state == RunState.RUNNING)
    return session.exec(query).first()


# Built once, given values as parameters (per usage interval: building one costs more than running it).
_RUNS = table_of(RunRow)
_CLAIM_INTERVAL = (
    update(_RUNS)
    .where(_RUNS.c.run_id == bindparam("match_run_id"))
    .where(_RUNS.c.next_seq == bindparam("seq"))
    .where(_RUNS.c.state == RunState.RUNNING)
    .values(next_seq=_RUNS.c.next_seq + 1)
)
_FINISH_RUN = (
    update(_RUNS)
    .where(_RUNS.c.run_id == bindparam("match_run_id"))
    .where(_RUNS.c.state == RunState.RUNNING)
    .values(state=bindparam("end_state"))
)


def claim_interval(session: Session, run_id: str, seq: int) -> bool:
    """Advance a run past interval `seq` only if nobody did yet: two agents never both report it."""
    result = session.execute(_CLAIM_INTERVAL, {"match_run_id": run_id, "seq": seq})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish_run(session: Session, run_id: str, state: RunState) -> bool:
    """End a running run (completed, failed or cancelled); False if it already ended."""
    result = session.execute(_FINISH_RUN, {"match_run_id": run_id, "end_state": state})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
