"""Governance's tables: the hash-chained decision log, an index of rule findings, and the chain head."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Table
from sqlmodel import Field, Session, SQLModel, col, select

from services.shared.db import table_of


class DecisionLogEntry(SQLModel, table=True):
    __tablename__ = "decision_log"

    seq: int = Field(primary_key=True)
    decision_id: str = Field(index=True, unique=True, max_length=36)
    job_id: str = Field(index=True, max_length=36)
    tenant_id: str = Field(index=True, max_length=64)
    policy_revision: str = Field(index=True, max_length=64)
    decided_at: datetime
    content: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    previous_hash: str = Field(max_length=64)
    entry_hash: str = Field(max_length=64)


class DecisionFinding(SQLModel, table=True):
    """One row per (decision, site, rule) found, so an auditor can search by site or rule."""

    __tablename__ = "decision_findings"

    id: int | None = Field(default=None, primary_key=True)
    decision_id: str = Field(index=True, max_length=36)
    site_id: str = Field(index=True, max_length=64)
    rule: str = Field(index=True, max_length=20)
    outcome: str = Field(max_length=10)  # deny, warn, dryrun or exempted
    site_allowed: bool


class ChainHead(SQLModel, table=True):
    """A single row locked by every append, so concurrent workers extend the chain one at a time."""

    __tablename__ = "decision_chain_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    entry_hash: str = Field(max_length=64)


class DecisionOutcome(SQLModel, table=True):
    """What placement did with a decision: the site chosen (if any) and every site's capacity facts."""

    __tablename__ = "decision_outcomes"

    decision_id: str = Field(primary_key=True, max_length=36)
    job_id: str = Field(index=True, max_length=36)
    outcome: str = Field(max_length=10)  # placed, queued or rejected
    site_id: str | None = Field(default=None, max_length=64)
    # A rejection's code: what-if holds the reasons that are not the policy's (the deadline, the budget).
    code: str | None = Field(default=None, max_length=40)
    explanation: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # Set when the job completed: a finished job is not re-checked against later revisions.
    finished: bool = False


class FinishedRun(SQLModel, table=True):
    """A job's run that ended at a site. Kept apart from the outcome because the completion may be read
    before the placement it ends (the topics are not ordered with each other)."""

    __tablename__ = "finished_runs"

    job_id: str = Field(primary_key=True, max_length=36)
    site_id: str = Field(primary_key=True, max_length=64)


class CancelledJob(SQLModel, table=True):
    """A job placement honoured a cancel for: what-if says so of a change to its decision."""

    __tablename__ = "governance_cancellations"

    job_id: str = Field(primary_key=True, max_length=36)
    cancelled_at: datetime
    stage: str = Field(max_length=20)


class SiteSnapshotRow(SQLModel, table=True):
    """A site's document as a decision's policy read it, by digest (decisions refer to it)."""

    __tablename__ = "site_snapshots"

    site_sha256: str = Field(primary_key=True, max_length=64)
    site_id: str = Field(max_length=64)
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class JobDocumentRow(SQLModel, table=True):
    """A job as the policy reads it, from its signed request, by digest (decisions refer to it)."""

    __tablename__ = "job_documents"

    job_sha256: str = Field(primary_key=True, max_length=64)
    job_id: str = Field(max_length=36)
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class PolicyRevisionRow(SQLModel, table=True):
    __tablename__ = "policy_revisions"

    revision: str = Field(primary_key=True, max_length=64)
    published_by: str
    published_at: datetime
    tests_passed: int
    bundle: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))


TABLES: list[Table] = [
    table_of(CancelledJob),
    table_of(DecisionLogEntry),
    table_of(DecisionFinding),
    table_of(ChainHead),
    table_of(DecisionOutcome),
    table_of(FinishedRun),
    table_of(PolicyRevisionRow),
    table_of(SiteSnapshotRow),
    table_of(JobDocumentRow),
]


def decision_input(session: Session, decision: dict[str, Any]) -> dict[str, Any] | None:
    """A logged decision's policy input as it was evaluated, its sites read back from their snapshots and its
    job from its request; None when it has no input or a document it refers to was never received."""
    recorded = decision.get("input")
    digests = decision.get("site_sha256")
    if recorded is None or digests is None:
        return recorded  # logged before decisions referred to snapshots: the input has its sites
    if (job_sha256 := decision.get("job_sha256")) is not None:
        job = session.get(JobDocumentRow, job_sha256)
        if job is None:
            return None
        recorded = {**recorded, "job": job.document}
    rows = session.exec(
        select(SiteSnapshotRow).where(col(SiteSnapshotRow.site_sha256).in_(set(digests.values())))
    )
    documents = {row.site_sha256: row.document for row in rows}
    if not set(digests.values()) <= set(documents):
        return None
    return {**recorded, "sites": {site_id: documents[digest] for site_id, digest in digests.items()}}


_HEAD_FOR_UPDATE = select(ChainHead).where(ChainHead.id == 1).with_for_update()


def lock_head(session: Session, genesis_hash: str) -> ChainHead:
    head = session.exec(_HEAD_FOR_UPDATE).first()
    if head is None:
        head = ChainHead(id=1, seq=0, entry_hash=genesis_hash)
        session.add(head)
        session.flush()
    return head


def entries_in_order(session: Session) -> list[DecisionLogEntry]:
    return list(session.exec(select(DecisionLogEntry).order_by(col(DecisionLogEntry.seq))))
