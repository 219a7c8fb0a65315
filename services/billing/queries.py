"""What a tenant's finance user may read: its own usage, invoices and budget, never another tenant's.

Every query takes the asking tenant's identity and filters by it; asking for another tenant's invoice by
its id is refused, not answered with nothing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from sqlmodel import Session, select

from contracts.events import InvoiceIssued
from services.billing.invoice import compose_invoice
from services.billing.storage import ChargeRow, InvoiceRow, UsageLineRow, charged_krw, invoice_lines
from services.shared.domain.catalogue import Tenant


class ForeignTenantError(PermissionError):
    """A tenant asked for another tenant's records."""


@dataclass(frozen=True)
class UsageRow:
    site_id: str
    accelerator_model: str
    gpu_seconds: int
    input_tokens: int
    output_tokens: int
    energy_wh: int
    amount_krw: int


@dataclass(frozen=True)
class BudgetView:
    kind: str
    scope: str
    amount_krw: int
    charged_krw: int

    @property
    def left_krw(self) -> int:
        return self.amount_krw - self.charged_krw


@dataclass(frozen=True)
class InvoiceView:
    status: str  # draft or issued
    invoice: InvoiceIssued


@dataclass(frozen=True)
class UsageReport:
    tenant_id: str
    period: str
    rows: list[UsageRow] = field(default_factory=list)
    unrated_lines: int = 0
    invoice: InvoiceView | None = None
    budget: BudgetView | None = None


def usage_report(session: Session, tenant: Tenant, period: str) -> UsageReport:
    """Usage dated in the period, by site and accelerator, with its invoice and the budget left."""
    query = (
        select(UsageLineRow, ChargeRow)
        .join(
            ChargeRow,
            (ChargeRow.job_id == UsageLineRow.job_id) & (ChargeRow.attempt == UsageLineRow.attempt),  # type: ignore[arg-type]
        )
        .where(UsageLineRow.tenant_id == tenant.tenant_id)
    )
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    unrated = 0
    for line, charge in session.exec(query):
        if line.usage_period is None:
            unrated += 1
            continue
        if line.usage_period != period:
            continue
        row = totals[charge.site_id, charge.accelerator_model or "?"]
        for index, value in enumerate(
            (line.gpu_seconds, line.input_tokens, line.output_tokens, line.energy_wh, line.amount_krw or 0)
        ):
            row[index] += value
    rows = [UsageRow(site, model, *values) for (site, model), values in sorted(totals.items())]
    budget = None
    if tenant.budget is not None:
        scope = "all" if tenant.budget.kind == "prepaid" else period
        charged = charged_krw(session, tenant.tenant_id, None if scope == "all" else period)
        budget = BudgetView(tenant.budget.kind, scope, tenant.budget.amount_krw, charged)
    return UsageReport(tenant.tenant_id, period, rows, unrated, find_invoice(session, tenant, period), budget)


def find_invoice(
    session: Session, tenant: Tenant, period: str | None = None, invoice_id: uuid.UUID | None = None
) -> InvoiceView | None:
    """The tenant's invoice by period or id: as issued, or the draft as it stands now."""
    query = select(InvoiceRow)
    if invoice_id is not None:
        query = query.where(InvoiceRow.invoice_id == str(invoice_id))
    else:
        query = query.where(InvoiceRow.tenant_id == tenant.tenant_id).where(InvoiceRow.period == period)
    invoice = session.exec(query).first()
    if invoice is None:
        return None
    if invoice.tenant_id != tenant.tenant_id:
        raise ForeignTenantError(f"invoice {invoice_id} is not {tenant.tenant_id}'s")
    if invoice.status == "issued" and invoice.document is not None:
        return InvoiceView("issued", InvoiceIssued.model_validate(invoice.document))
    lines = invoice_lines(session, tenant.tenant_id, invoice.period)
    return InvoiceView("draft", compose_invoice(tenant, invoice, lines))
