"""`sovereign usage`, `sovereign invoice` and `sovereign billing check`: what a finance user asks of
billing's database. The tenant given is the asker's identity: only its own records are shown."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import uuid
from pathlib import Path

from contracts.events import InvoiceIssued
from services.billing.check import check_billing
from services.billing.handlers import BillingContext, InvoiceError, issue_invoice
from services.billing.queries import ForeignTenantError, InvoiceView, find_invoice, usage_report
from services.billing.storage import TABLES
from services.shared.db import create_service_engine, database_url_for, unit_of_work, utc_now
from services.shared.domain.catalogue import Tenant, load_catalogue
from services.shared.settings import Settings
from sovereign.options import Commands, connection_options, period, settings_of
from sovereign.report import table, won
from sovereign.verification.databases import service_session

CSV_COLUMNS = [
    "kind",
    "invoice_id",
    "tenant_id",
    "period",
    "job_id",
    "attempt",
    "site_id",
    "accelerator_model",
    "policy_revision",
    "charge_model",
    "usage_period",
    "adjustment",
    "gpu_seconds",
    "input_tokens",
    "output_tokens",
    "amount_krw",
]


def _tenant(settings: Settings, tenant_id: str) -> Tenant | None:
    tenant = load_catalogue(settings.catalogue_dir).tenants.get(tenant_id)
    if tenant is None:
        print(f"error: tenant {tenant_id!r} is not in the tenant registry", file=sys.stderr)
    return tenant


def show_usage(settings: Settings, tenant_id: str, period: str) -> int:
    tenant = _tenant(settings, tenant_id)
    if tenant is None:
        return 2
    with service_session(settings, "billing", TABLES) as session:
        report = usage_report(session, tenant, period)
    print(f"Usage of {tenant.name} ({tenant_id}) dated in {period} (KST)\n")
    if report.rows:
        print(
            table(
                [
                    "site",
                    "accelerator",
                    "GPU-hours",
                    "M input tokens",
                    "M output tokens",
                    "kWh",
                    "amount KRW",
                ],
                [
                    [
                        r.site_id,
                        r.accelerator_model,
                        f"{r.gpu_seconds / 3600:,.2f}",
                        f"{r.input_tokens / 1e6:,.1f}",
                        f"{r.output_tokens / 1e6:,.1f}",
                        f"{r.energy_wh / 1000:,.1f}",
                        won(r.amount_krw),
                    ]
                    for r in report.rows
                ],
                right={2, 3, 4, 5, 6},
            )
        )
        print(f"  {'total':<40} {won(sum(r.amount_krw for r in report.rows)):>30} KRW")
    else:
        print("  no rated usage in this period")
    if report.unrated_lines:
        print(f"\n  {report.unrated_lines} usage reports wait for earlier intervals or their placement")
    if report.invoice is not None:
        _print_totals(report.invoice)
    if report.budget is not None:
        budget = report.budget
        scope = "all time" if budget.scope == "all" else budget.scope
        print(
            f"\nBudget ({budget.kind}, {scope}): {won(budget.amount_krw)} KRW; "
            f"charged {won(budget.charged_krw)}; left {won(budget.left_krw)} KRW"
        )
    return 0


def _print_totals(view: InvoiceView) -> None:
    invoice = view.invoice
    adjustments = sum(line.amount_krw for line in invoice.lines if line.adjustment)
    print(f"\nInvoice {invoice.invoice_id} for {invoice.period}: {view.status}")
    print(f"  subtotal         {won(invoice.subtotal_krw):>18} KRW ({len(invoice.lines)} lines", end="")
    print(f", of which adjustments {won(adjustments)})" if adjustments else ")")
    print(f"  volume discount  {won(-invoice.volume_discount_krw):>18} KRW")
    print(f"  VAT 10%          {won(invoice.vat_krw):>18} KRW")
    print(f"  total            {won(invoice.total_krw):>18} KRW")


def invoice_command(
    settings: Settings,
    tenant_id: str,
    period: str | None,
    invoice_id: uuid.UUID | None,
    issue: bool,
    output_format: str,
    output: Path | None,
) -> int:
    tenant = _tenant(settings, tenant_id)
    if tenant is None:
        return 2
    if issue:
        if period is None:
            print("error: --issue needs --period", file=sys.stderr)
            return 2
        engine = create_service_engine(
            database_url_for(settings, "billing"), "billing", TABLES, settings.database_schema_prefix
        )
        context = BillingContext(fee_bps=settings.marketplace_fee_bps, tenants={tenant_id: tenant})
        try:
            with unit_of_work(engine) as session:
                issue_invoice(context, session, tenant_id, period, utc_now())
        except InvoiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
        print(f"issued the invoice of {tenant_id} for {period}; billing publishes it on invoices.issued")
    with service_session(settings, "billing", TABLES) as session:
        try:
            view = find_invoice(session, tenant, period, invoice_id)
        except ForeignTenantError as error:
            print(f"error: refused: {error}", file=sys.stderr)
            return 3
    if view is None:
        print(f"no invoice for {tenant_id} {'in ' + period if period else str(invoice_id)}", file=sys.stderr)
        return 1
    text = {"json": _as_json, "csv": _as_csv, "text": _as_text}[output_format](view)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        print(f"wrote the {view.status} invoice to {output}")
    return 0


def _as_json(view: InvoiceView) -> str:
    return view.invoice.model_dump_json(indent=2) + "\n"


def _as_csv(view: InvoiceView) -> str:
    invoice = view.invoice
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    head = {"invoice_id": invoice.invoice_id, "tenant_id": invoice.tenant_id, "period": invoice.period}
    for line in invoice.lines:
        writer.writerow({"kind": "line", **head, **line.model_dump(mode="json")})
    for kind, amount in _totals(invoice):
        writer.writerow({"kind": kind, **head, "amount_krw": amount})
    return buffer.getvalue()


def _totals(invoice: InvoiceIssued) -> list[tuple[str, int]]:
    return [
        ("subtotal", invoice.subtotal_krw),
        ("volume_discount", -invoice.volume_discount_krw),
        ("vat", invoice.vat_krw),
        ("total", invoice.total_krw),
    ]


def _as_text(view: InvoiceView) -> str:
    invoice = view.invoice
    rows = [
        [
            str(line.job_id)[:8],
            line.attempt,
            line.site_id,
            line.accelerator_model,
            line.policy_revision[:12],
            line.charge_model,
            f"{line.usage_period}{' adj.' if line.adjustment else ''}",
            f"{line.gpu_seconds / 3600:,.2f}",
            won(line.amount_krw),
        ]
        for line in invoice.lines
    ]
    lines = [
        f"Invoice {invoice.invoice_id} ({view.status}): {invoice.tenant_id}, {invoice.period}",
        table(
            ["job", "run", "site", "accelerator", "policy", "charged per", "usage month", "GPU-h", "KRW"],
            rows,
            right={1, 7, 8},
        ),
        *(f"  {kind:<16} {won(amount):>18} KRW" for kind, amount in _totals(invoice)),
    ]
    return "\n".join(lines) + "\n"


def billing_check(settings: Settings) -> int:
    tenants = load_catalogue(settings.catalogue_dir).tenants
    with service_session(settings, "billing", TABLES) as session:
        report = check_billing(session, tenants)
    print(
        f"recomputed {report.lines} usage lines of {report.runs} runs and {report.invoices} invoices from "
        f"the stored usage; read {report.postings} ledger postings"
    )
    for problem in report.problems:
        print(f"  FAIL {problem}")
    print("ok: every amount recomputes exactly and debits equal credits" if report.ok else "FAILED")
    return 0 if report.ok else 1


def register(commands: Commands) -> None:
    usage = commands.add_parser(
        "usage", help="a tenant's usage in a month: by site and accelerator, budget left"
    )
    usage.add_argument("--tenant", required=True, help="who is asking: only its own records are shown")
    usage.add_argument("--period", required=True, type=period, help="YYYY-MM (months in KST)")
    connection_options(usage)
    usage.set_defaults(handler=_usage)

    invoice = commands.add_parser("invoice", help="show, export or issue a tenant's monthly invoice")
    invoice.add_argument("--tenant", required=True, help="who is asking: only its own invoices are shown")
    invoice.add_argument("--period", type=period, help="YYYY-MM")
    invoice.add_argument("--invoice-id", help="an invoice id instead of a period")
    invoice.add_argument("--issue", action="store_true", help="issue the draft: immutable afterwards")
    invoice.add_argument("--format", choices=["text", "json", "csv"], default="text")
    invoice.add_argument("--output", help="write to this file instead of standard output")
    connection_options(invoice)
    invoice.set_defaults(handler=_invoice)

    billing = commands.add_parser("billing", help="finance checks").add_subparsers(
        dest="billing_command", required=True
    )
    check = billing.add_parser(
        "check", help="recompute every charge and invoice from stored usage; prove debits equal credits"
    )
    connection_options(check)
    check.set_defaults(handler=_billing_check)


def _usage(args: argparse.Namespace) -> int:
    return show_usage(settings_of(args), args.tenant, args.period)


def _invoice(args: argparse.Namespace) -> int:
    if (args.period is None) == (args.invoice_id is None):
        print("error: give exactly one of --period and --invoice-id", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else None
    invoice_id = uuid.UUID(args.invoice_id) if args.invoice_id else None
    return invoice_command(
        settings_of(args), args.tenant, args.period, invoice_id, args.issue, args.format, output
    )


def _billing_check(args: argparse.Namespace) -> int:
    return billing_check(settings_of(args))
