"""Billing's tables: a charge per job (price locked at placement), usage lines, and ledger postings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, func, select

from services.shared.db import table_of, utc_now


class ChargeRow(SQLModel, table=True):
    """One per run of a job (a failed run and its retry are billed apart, each at its own locked price).
    Created by whichever of placed / completed / usage arrives first; rated once the placement is known."""

    __tablename__ = "charges"

    job_id: str = Field(primary_key=True, max_length=36)
    attempt: int = Field(default=1, primary_key=True)
    tenant_id: str = Field(index=True, max_length=64)
    site_id: str = Field(max_length=64)
    accelerator_model: str | None = None
    price_krw_per_gpu_hour: int | None = None
    expected_reports: int | None = None
    rated_seq: int = 0
    rated_gpu_seconds: int = 0
    rated_amount_krw: int = 0
    rated_fee_krw: int = 0
    billed: bool = False


class UsageLineRow(SQLModel, table=True):
    __tablename__ = "usage_lines"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=200)
    event_id: str = Field(max_length=36)
    job_id: str = Field(index=True, max_length=36)
    attempt: int = 1
    tenant_id: str = Field(max_length=64)
    seq: int
    gpu_seconds: int
    energy_wh: int
    input_tokens: int
    output_tokens: int
    amount_krw: int | None = None
    received_at: datetime = Field(default_factory=utc_now)


class PostingRow(SQLModel, table=True):
    """Double-entry ledger: the postings of one transaction sum to zero (debit positive, credit negative)."""

    __tablename__ = "ledger_postings"

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: str = Field(index=True, max_length=36)
    job_id: str = Field(index=True, max_length=36)
    account: str = Field(index=True, max_length=120)
    amount_krw: int
    posted_at: datetime = Field(default_factory=utc_now)


TABLES: list[Table] = [table_of(ChargeRow), table_of(UsageLineRow), table_of(PostingRow)]


def lock_charge(session: Session, job_id: str, attempt: int) -> ChargeRow | None:
    """The run's charge, locked for this transaction (PostgreSQL; SQLite already serialises writers)."""
    query = select(ChargeRow).where(ChargeRow.job_id == job_id).where(ChargeRow.attempt == attempt)
    return session.exec(query.with_for_update()).first()


def usage_line(session: Session, job_id: str, attempt: int, seq: int) -> UsageLineRow | None:
    query = select(UsageLineRow).where(UsageLineRow.job_id == job_id).where(UsageLineRow.attempt == attempt)
    return session.exec(query.where(UsageLineRow.seq == seq)).first()


def unrated_lines(session: Session, job_id: str, attempt: int, after_seq: int) -> list[UsageLineRow]:
    return list(
        session.exec(
            select(UsageLineRow)
            .where(UsageLineRow.job_id == job_id)
            .where(UsageLineRow.attempt == attempt)
            .where(col(UsageLineRow.seq) > after_seq)
            .order_by(col(UsageLineRow.seq))
        )
    )


def ledger_imbalance(session: Session) -> int:
    """Sum of every posting; zero when the ledger balances."""
    return int(session.exec(select(func.coalesce(func.sum(PostingRow.amount_krw), 0))).one())
