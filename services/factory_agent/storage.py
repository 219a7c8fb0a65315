"""The factory agent's runs: one row per placed run of a job, advanced one usage interval at a time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, update
from sqlmodel import Field, Session, SQLModel, col, select

from services.shared.db import table_of, utc_now


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
    state: str = Field(default="running", index=True)
    next_seq: int = 1
    started_at: datetime = Field(default_factory=utc_now)


class CancelledJob(SQLModel, table=True):
    """A cancel that reached the factory before the placement did: the run must never start."""

    __tablename__ = "cancelled_jobs"

    job_id: str = Field(primary_key=True, max_length=36)


TABLES: list[Table] = [table_of(RunRow), table_of(CancelledJob)]


def run_key(job_id: str, attempt: int) -> str:
    return f"{job_id}/{attempt}"


def running_run(session: Session, job_id: str) -> RunRow | None:
    """The job's run in progress here, if any (earlier attempts have ended)."""
    query = select(RunRow).where(RunRow.job_id == job_id).where(RunRow.state == "running")
    return session.exec(query).first()


def claim_interval(session: Session, run_id: str, seq: int) -> bool:
    """Advance a run past interval `seq` only if nobody did yet: two agents never both report it."""
    result = session.execute(
        update(RunRow)
        .where(col(RunRow.run_id) == run_id)
        .where(col(RunRow.next_seq) == seq)
        .where(col(RunRow.state) == "running")
        .values(next_seq=seq + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish_run(session: Session, run_id: str, state: str = "completed") -> bool:
    """End a running run (completed, failed or cancelled); False if it already ended."""
    result = session.execute(
        update(RunRow)
        .where(col(RunRow.run_id) == run_id)
        .where(col(RunRow.state) == "running")
        .values(state=state)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
