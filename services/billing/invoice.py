"""An invoice as its rows make it (pure): one line per run and usage month, then the volume discount, VAT
and the total."""

from __future__ import annotations

import uuid
from collections import defaultdict

from contracts.events import InvoiceIssued, InvoiceLine
from services.billing.rating import vat_krw, volume_discount_krw
from services.billing.storage import ChargeRow, InvoiceRow, UsageLineRow
from services.shared.domain.catalogue import Tenant


def compose_invoice(
    tenant: Tenant | None, invoice: InvoiceRow, rows: list[tuple[UsageLineRow, ChargeRow]]
) -> InvoiceIssued:
    """The invoice as its lines make it: one line per run and usage month, then discount, VAT, total."""
    grouped: dict[tuple[str, int, str], list[tuple[UsageLineRow, ChargeRow]]] = defaultdict(list)
    for line, charge in rows:
        grouped[line.job_id, line.attempt, line.usage_period or invoice.period].append((line, charge))
    lines = []
    for (job_id, attempt, usage_period), members in sorted(grouped.items()):
        charge = members[0][1]
        lines.append(
            InvoiceLine(
                job_id=uuid.UUID(job_id),
                attempt=attempt,
                site_id=charge.site_id,
                accelerator_model=charge.accelerator_model or "",
                policy_revision=charge.policy_revision or "",
                charge_model="tokens" if charge.rate.per_token else "gpu_hour",
                usage_period=usage_period,
                adjustment=usage_period != invoice.period,
                gpu_seconds=sum(line.gpu_seconds for line, _ in members),
                input_tokens=sum(line.input_tokens for line, _ in members),
                output_tokens=sum(line.output_tokens for line, _ in members),
                amount_krw=sum(line.amount_krw or 0 for line, _ in members),
            )
        )
    subtotal = sum(line.amount_krw for line in lines)
    by_gpu_hour = [line for line in lines if line.charge_model == "gpu_hour"]
    discount = volume_discount_krw(
        sum(line.amount_krw for line in by_gpu_hour),
        sum(line.gpu_seconds for line in by_gpu_hour),
        tenant.volume_tiers if tenant else [],
    )
    net = subtotal - discount
    vat = vat_krw(net)
    return InvoiceIssued(
        invoice_id=uuid.UUID(invoice.invoice_id),
        tenant_id=invoice.tenant_id,
        period=invoice.period,
        lines=lines,
        subtotal_krw=subtotal,
        volume_discount_krw=discount,
        net_krw=net,
        vat_krw=vat,
        total_krw=net + vat,
    )
