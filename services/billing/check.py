"""The finance check: recompute every charge and invoice from the stored usage events and the prices
locked at placement, and prove the ledger balances. Any difference is reported, never repaired."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from services.billing.invoice import compose_invoice
from services.billing.rating import RECEIVABLE, Usage, interval_charge_krw, invoice_postings
from services.billing.storage import ChargeRow, InvoiceRow, PostingRow, UsageLineRow, invoice_lines
from services.shared.domain.catalogue import Tenant


@dataclass
class CheckReport:
    runs: int = 0
    lines: int = 0
    invoices: int = 0
    postings: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_billing(session: Session, tenants: dict[str, Tenant]) -> CheckReport:
    report = CheckReport()
    _check_runs(session, report)
    _check_invoices(session, tenants, report)
    _check_ledger(session, report)
    return report


def _check_runs(session: Session, report: CheckReport) -> None:
    """Every rated line's amount, re-rated from the usage in sequence at the run's locked prices."""
    for charge in session.exec(select(ChargeRow).order_by(col(ChargeRow.job_id), col(ChargeRow.attempt))):
        report.runs += 1
        if charge.price_krw_per_gpu_hour is None:
            continue
        query = (
            select(UsageLineRow)
            .where(UsageLineRow.job_id == charge.job_id)
            .where(UsageLineRow.attempt == charge.attempt)
            .where(col(UsageLineRow.amount_krw).is_not(None))
            .order_by(col(UsageLineRow.seq))
        )
        before = Usage()
        total = 0
        for line in session.exec(query):
            report.lines += 1
            expected = interval_charge_krw(before, line.usage, charge.rate)
            if line.amount_krw != expected:
                report.problems.append(
                    f"job {charge.job_id} run {charge.attempt} seq {line.seq}: stored {line.amount_krw} KRW, "
                    f"recomputed {expected}"
                )
            before = before + line.usage
            total += expected
        if total != charge.rated_amount_krw:
            report.problems.append(
                f"job {charge.job_id} run {charge.attempt}: rated {charge.rated_amount_krw} KRW, "
                f"recomputed {total}"
            )


def _check_invoices(session: Session, tenants: dict[str, Tenant], report: CheckReport) -> None:
    for invoice in session.exec(
        select(InvoiceRow).order_by(col(InvoiceRow.tenant_id), col(InvoiceRow.period))
    ):
        report.invoices += 1
        name = f"invoice {invoice.tenant_id} {invoice.period} ({invoice.status})"
        recomputed = compose_invoice(
            tenants.get(invoice.tenant_id), invoice, invoice_lines(session, invoice.tenant_id, invoice.period)
        )
        if recomputed.subtotal_krw != invoice.subtotal_krw:
            report.problems.append(
                f"{name}: subtotal {invoice.subtotal_krw} KRW, its lines add up to {recomputed.subtotal_krw}"
            )
        if invoice.status != "issued":
            continue
        stored = (invoice.volume_discount_krw, invoice.vat_krw, invoice.total_krw)
        again = (recomputed.volume_discount_krw, recomputed.vat_krw, recomputed.total_krw)
        if stored != again:
            report.problems.append(f"{name}: discount, VAT, total {stored}; recomputed {again}")
        if invoice.document is None or invoice.document.get("total_krw") != invoice.total_krw:
            report.problems.append(f"{name}: the issued document does not state the stored total")


def _check_ledger(session: Session, report: CheckReport) -> None:
    """Debits equal credits in every transaction, and each tenant's receivable equals what it was charged:
    its rated usage, less issued discounts, plus issued VAT."""
    by_transaction: dict[str, int] = defaultdict(int)
    receivable: dict[str, int] = defaultdict(int)
    for posting in session.exec(select(PostingRow)):
        report.postings += 1
        by_transaction[posting.transaction_id] += posting.amount_krw
        receivable[posting.account] += posting.amount_krw
    unbalanced = [t for t, total in by_transaction.items() if total != 0]
    if unbalanced:
        report.problems.append(f"{len(unbalanced)} ledger transactions do not balance, e.g. {unbalanced[0]}")
    expected: dict[str, int] = defaultdict(int)
    for line in session.exec(select(UsageLineRow).where(col(UsageLineRow.amount_krw).is_not(None))):
        expected[RECEIVABLE.format(tenant_id=line.tenant_id)] += line.amount_krw or 0
    for invoice in session.exec(select(InvoiceRow).where(InvoiceRow.status == "issued")):
        for owed in invoice_postings(invoice.tenant_id, invoice.volume_discount_krw, invoice.vat_krw):
            if owed.account.startswith("receivable:"):
                expected[owed.account] += owed.amount_krw
    for account in sorted(set(expected) | {a for a in receivable if a.startswith("receivable:")}):
        if receivable.get(account, 0) != expected.get(account, 0):
            report.problems.append(
                f"{account}: ledger says {receivable.get(account, 0)} KRW, usage and invoices say "
                f"{expected.get(account, 0)}"
            )
