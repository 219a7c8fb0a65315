"""Billing's tables: a charge per run (prices locked at placement), usage lines, invoices, budget alerts
and the double-entry ledger.

Won amounts and usage counts are 64-bit (BigInteger): one large run bills more than 2^31 won.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Table, UniqueConstraint, bindparam, insert
from sqlmodel import Field, Session, SQLModel, col, func, select

from services.billing.rating import Posting, Rate, Usage
from services.shared.db import table_of, utc_now

INVOICE_NAMESPACE = uuid.UUID("3e0f5a51-7c2d-4b8e-a0f4-9d21c6b7e845")


class ChargeRow(SQLModel, table=True):
    """One per run of a job (a failed run and its retry are billed apart, each at its own locked price).
    Created by whichever of placed / completed / usage arrives first; rated once the placement is known."""

    __tablename__ = "charges"

    job_id: str = Field(primary_key=True, max_length=36)
    attempt: int = Field(default=1, primary_key=True)
    tenant_id: str = Field(index=True, max_length=64)
    site_id: str = Field(max_length=64)
    accelerator_model: str | None = None
    policy_revision: str | None = None
    price_krw_per_gpu_hour: int | None = None
    price_krw_per_million_input_tokens: int | None = None
    price_krw_per_million_output_tokens: int | None = None
    expected_reports: int | None = None
    rated_seq: int = 0
    rated_gpu_seconds: int = Field(default=0, sa_type=BigInteger)
    rated_input_tokens: int = Field(default=0, sa_type=BigInteger)
    rated_output_tokens: int = Field(default=0, sa_type=BigInteger)
    rated_amount_krw: int = Field(default=0, sa_type=BigInteger)
    rated_fee_krw: int = Field(default=0, sa_type=BigInteger)
    billed: bool = False

    @property
    def rate(self) -> Rate:
        assert self.price_krw_per_gpu_hour is not None
        return Rate(
            self.price_krw_per_gpu_hour,
            self.price_krw_per_million_input_tokens,
            self.price_krw_per_million_output_tokens,
        )

    @property
    def rated_usage(self) -> Usage:
        return Usage(self.rated_gpu_seconds, self.rated_input_tokens, self.rated_output_tokens)


class UsageLineRow(SQLModel, table=True):
    """A usage report exactly as received, plus what rating made of it (amount, periods)."""

    __tablename__ = "usage_lines"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "seq"),
        UniqueConstraint("source", "event_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=200)
    event_id: str = Field(max_length=36)
    job_id: str = Field(index=True, max_length=36)
    attempt: int = 1
    tenant_id: str = Field(index=True, max_length=64)
    seq: int
    gpu_seconds: int = Field(sa_type=BigInteger)
    energy_wh: int = Field(sa_type=BigInteger)
    input_tokens: int = Field(sa_type=BigInteger)
    output_tokens: int = Field(sa_type=BigInteger)
    interval_end: datetime
    # Set when rated: the amount, the month the usage is dated in, and the invoice that carries it.
    amount_krw: int | None = Field(default=None, sa_type=BigInteger)
    usage_period: str | None = Field(default=None, max_length=7)
    invoice_period: str | None = Field(default=None, index=True, max_length=7)
    received_at: datetime = Field(default_factory=utc_now)

    @property
    def usage(self) -> Usage:
        return Usage(self.gpu_seconds, self.input_tokens, self.output_tokens)


class InvoiceRow(SQLModel, table=True):
    """A tenant's month: a draft that accumulates rated usage, then issued and never changed again."""

    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("tenant_id", "period"),)

    invoice_id: str = Field(primary_key=True, max_length=36)
    tenant_id: str = Field(index=True, max_length=64)
    period: str = Field(max_length=7)
    status: str = Field(default="draft", max_length=10)
    subtotal_krw: int = Field(default=0, sa_type=BigInteger)
    volume_discount_krw: int = Field(default=0, sa_type=BigInteger)
    vat_krw: int = Field(default=0, sa_type=BigInteger)
    total_krw: int = Field(default=0, sa_type=BigInteger)
    issued_at: datetime | None = None
    # The issued invoice as sent (InvoiceIssued), kept verbatim.
    document: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class BudgetAlertRow(SQLModel, table=True):
    """A budget threshold already announced: each fires once per tenant, scope and threshold."""

    __tablename__ = "budget_alerts"

    tenant_id: str = Field(primary_key=True, max_length=64)
    scope: str = Field(primary_key=True, max_length=7)
    threshold_percent: int = Field(primary_key=True)
    charged_krw: int = Field(sa_type=BigInteger)
    crossed_at: datetime = Field(default_factory=utc_now)


class PostingRow(SQLModel, table=True):
    """Double-entry ledger: the postings of one transaction sum to zero (debit positive, credit negative)."""

    __tablename__ = "ledger_postings"

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: str = Field(index=True, max_length=48)
    job_id: str | None = Field(default=None, index=True, max_length=36)
    account: str = Field(index=True, max_length=120)
    amount_krw: int = Field(sa_type=BigInteger)
    posted_at: datetime = Field(default_factory=utc_now)


TABLES: list[Table] = [
    table_of(ChargeRow),
    table_of(UsageLineRow),
    table_of(InvoiceRow),
    table_of(BudgetAlertRow),
    table_of(PostingRow),
]


def invoice_id_for(tenant_id: str, period: str) -> str:
    return str(uuid.uuid5(INVOICE_NAMESPACE, f"{tenant_id}/{period}"))


# The lookups of every usage event, built once and given their values as parameters: building a select
# costs more than running it (252 against 95 µs for a usage line on SQLite).
_CHARGE_FOR_UPDATE = (
    select(ChargeRow)
    .where(ChargeRow.job_id == bindparam("job_id"), ChargeRow.attempt == bindparam("attempt"))
    .with_for_update()
)
_INVOICE_FOR_UPDATE = (
    select(InvoiceRow)
    .where(InvoiceRow.tenant_id == bindparam("tenant_id"), InvoiceRow.period == bindparam("period"))
    .with_for_update()
)
_RUN_LINES = select(UsageLineRow).where(
    UsageLineRow.job_id == bindparam("job_id"), UsageLineRow.attempt == bindparam("attempt")
)
_LINE = _RUN_LINES.where(UsageLineRow.seq == bindparam("seq"))
_UNRATED_LINES = _RUN_LINES.where(col(UsageLineRow.seq) > bindparam("after_seq")).order_by(
    col(UsageLineRow.seq)
)
_LINE_BY_EVENT = select(UsageLineRow).where(
    UsageLineRow.source == bindparam("source"), UsageLineRow.event_id == bindparam("event_id")
)
_CHARGED = select(func.coalesce(func.sum(InvoiceRow.subtotal_krw), 0)).where(
    InvoiceRow.tenant_id == bindparam("tenant_id")
)
_CHARGED_IN_PERIOD = _CHARGED.where(InvoiceRow.period == bindparam("period"))


def lock_charge(session: Session, job_id: str, attempt: int) -> ChargeRow | None:
    """The run's charge, locked for this transaction (PostgreSQL; SQLite already serialises writers)."""
    return session.exec(_CHARGE_FOR_UPDATE, params={"job_id": job_id, "attempt": attempt}).first()


def lock_invoice(session: Session, tenant_id: str, period: str) -> InvoiceRow:
    """The tenant's invoice for the period, created as a draft if needed, locked for this transaction."""
    invoice = session.exec(_INVOICE_FOR_UPDATE, params={"tenant_id": tenant_id, "period": period}).first()
    if invoice is None:
        invoice = InvoiceRow(invoice_id=invoice_id_for(tenant_id, period), tenant_id=tenant_id, period=period)
        session.add(invoice)
        session.flush()
    return invoice


_INSERT_POSTING = insert(table_of(PostingRow))


def post(session: Session, transaction_id: str, job_id: str | None, postings: Sequence[Posting]) -> None:
    """One ledger transaction, in one statement (no ORM objects to flush)."""
    now = utc_now()
    rows = [
        {
            "transaction_id": transaction_id,
            "job_id": job_id,
            "account": posting.account,
            "amount_krw": posting.amount_krw,
            "posted_at": now,
        }
        for posting in postings
    ]
    if rows:
        session.execute(_INSERT_POSTING, rows)


def usage_line(session: Session, job_id: str, attempt: int, seq: int) -> UsageLineRow | None:
    return session.exec(_LINE, params={"job_id": job_id, "attempt": attempt, "seq": seq}).first()


def line_by_event(session: Session, source: str, event_id: str) -> UsageLineRow | None:
    return session.exec(_LINE_BY_EVENT, params={"source": source, "event_id": event_id}).first()


def unrated_lines(session: Session, job_id: str, attempt: int, after_seq: int) -> list[UsageLineRow]:
    return list(
        session.exec(_UNRATED_LINES, params={"job_id": job_id, "attempt": attempt, "after_seq": after_seq})
    )


def invoice_lines(session: Session, tenant_id: str, period: str) -> list[tuple[UsageLineRow, ChargeRow]]:
    """The rated usage an invoice carries, with each line's run."""
    query = (
        select(UsageLineRow, ChargeRow)
        .join(
            ChargeRow,
            (col(ChargeRow.job_id) == col(UsageLineRow.job_id))
            & (col(ChargeRow.attempt) == col(UsageLineRow.attempt)),
        )
        .where(UsageLineRow.tenant_id == tenant_id)
        .where(UsageLineRow.invoice_period == period)
        .order_by(col(UsageLineRow.job_id), col(UsageLineRow.attempt), col(UsageLineRow.seq))
    )
    return [(line, charge) for line, charge in session.exec(query)]


def charged_krw(session: Session, tenant_id: str, period: str | None) -> int:
    """Rated charges of a tenant (on one period's invoice, or all), before discount and VAT: the sum of its
    invoices' running subtotals, which `billing check` proves equal to their lines."""
    if period is None:
        return int(session.exec(_CHARGED, params={"tenant_id": tenant_id}).one() or 0)
    return int(session.exec(_CHARGED_IN_PERIOD, params={"tenant_id": tenant_id, "period": period}).one() or 0)


def ledger_imbalance(session: Session) -> int:
    """Sum of every posting; zero when the ledger balances."""
    return int(session.exec(select(func.coalesce(func.sum(PostingRow.amount_krw), 0))).one())
