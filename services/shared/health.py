"""Worker heartbeats: each running worker keeps a row in its service's database, so `sovereign status` can
say which workers are up and ready without reaching into their processes."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import JSON, Column, Engine
from sqlmodel import Field, Session, SQLModel, col, select

from services.shared.db import as_utc, unit_of_work, utc_now

HEARTBEAT_SECONDS = 2.0
# A worker whose last heartbeat is older than this is reported down (killed, hung or stopped).
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# A service whose oldest outbox row has waited longer than this is not ready: its relay normally publishes
# within a poll (half a second), so a minute means it is stuck (a broker down, or refusing it).
OUTBOX_STALE_AFTER = timedelta(seconds=60)


class WorkerRow(SQLModel, table=True):
    __tablename__ = "service_workers"

    worker_id: str = Field(primary_key=True, max_length=100)
    host: str = Field(max_length=100)
    pid: int
    # The topics this worker consumes, so status can compute its lag without building the service.
    topics: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The consumer group it reads them in (a factory's agent for its sites has one of its own, named after
    # them: unbounded).
    consumer_group: str = ""
    started_at: datetime = Field(default_factory=utc_now)
    ready_at: datetime | None = None
    heartbeat_at: datetime = Field(default_factory=utc_now)
    stopped_at: datetime | None = None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def register_worker(session: Session, worker_id: str, topics: list[str], consumer_group: str) -> None:
    session.add(
        WorkerRow(
            worker_id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            topics=topics,
            consumer_group=consumer_group,
        )
    )


def mark_worker(engine: Engine, worker_id: str, *, ready: bool = False, stopped: bool = False) -> None:
    with unit_of_work(engine) as session:
        row = session.get(WorkerRow, worker_id)
        if row is None:  # removed by hand: come back
            row = WorkerRow(worker_id=worker_id, host=socket.gethostname(), pid=os.getpid())
            session.add(row)
        now = utc_now()
        row.heartbeat_at = now
        if ready and row.ready_at is None:
            row.ready_at = now
        if stopped:
            row.stopped_at = now


def worker_state(row: WorkerRow, now: datetime) -> str:
    """ready, starting, stopped or down (no heartbeat for a while without a clean stop)."""
    if row.stopped_at is not None:
        return "stopped"
    if now - as_utc(row.heartbeat_at) > STALE_AFTER:
        return "down"
    return "ready" if row.ready_at is not None else "starting"


def recent_workers(session: Session, keep: int = 20) -> list[WorkerRow]:
    """The most recently started workers, newest first."""
    return list(session.exec(select(WorkerRow).order_by(col(WorkerRow.started_at).desc()).limit(keep)))
