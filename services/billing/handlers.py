"""Billing's transaction scripts: record placements, completions and usage; rate usage in sequence order
with the prices locked at placement; charge it to the right month's invoice; post balanced ledger entries;
bill a run once all its usage is rated; issue invoices; announce budget thresholds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from contracts.events import (
    BudgetThresholdCrossed,
    BudgetThresholdCrossedEvent,
    InvoiceIssued,
    InvoiceIssuedEvent,
    JobBilled,
    JobBilledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    UsageRated,
    UsageRatedEvent,
    UsageReportedEvent,
)
from services.billing.invoice import compose_invoice
from services.billing.rating import (
    Usage,
    fee_krw,
    interval_charge_krw,
    invoice_postings,
    next_period,
    postings_for,
)
from services.billing.storage import (
    BudgetAlertRow,
    ChargeRow,
    InvoiceRow,
    UsageLineRow,
    charged_krw,
    invoice_lines,
    line_by_event,
    lock_charge,
    lock_invoice,
    post,
    unrated_lines,
    usage_line,
)
from services.shared.batch import PoisonMessage
from services.shared.db import as_utc
from services.shared.domain.catalogue import Tenant
from services.shared.domain.money import period_of
from services.shared.domain.signing import Keyring, KeyRole
from services.shared.inbox import claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox

CONSUMER = "billing"
SOURCE = "service/billing"


@dataclass(frozen=True)
class BillingContext:
    fee_bps: int
    # Commercial terms: budgets and volume tiers.
    tenants: dict[str, Tenant] = field(default_factory=dict)
    # Factories' keys: each usage report and run end must be signed by a key of the factory running its
    # site (with no keyring, all are refused).
    keyring: Keyring = field(default_factory=Keyring.empty)


def _charge_for(
    session: Session, job_id: str, attempt: int, tenant_id: str, site_id: str, placement: bool = False
) -> ChargeRow:
    """The run's charge, created by whichever event about it comes first. A factory's report must come from
    the run's site: its key speaks for its own sites, not for runs placed elsewhere. The placement itself
    says where the run is."""
    charge = lock_charge(session, job_id, attempt)
    if charge is None:
        charge = ChargeRow(job_id=job_id, attempt=attempt, tenant_id=tenant_id, site_id=site_id)
        session.add(charge)
        session.flush()
    elif charge.tenant_id != tenant_id:
        raise PoisonMessage(f"job {job_id} belongs to tenant {charge.tenant_id}, not {tenant_id}")
    elif charge.site_id != site_id and not placement:
        raise PoisonMessage(
            f"run {attempt} of job {job_id} is at {charge.site_id}, not at {site_id}, which reports on it"
        )
    return charge


def on_job_placed(ctx: BillingContext, session: Session, event: JobPlacedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    placed = event.data
    charge = _charge_for(
        session, str(placed.job_id), placed.attempt, placed.tenant_id, placed.site_id, placement=True
    )
    if charge.site_id != placed.site_id:  # reports from another site came first: nothing can undo them here
        get_logger(job_id=charge.job_id, attempt=charge.attempt).error(
            "reports_from_another_site_before_placement", reported_by=charge.site_id, placed_at=placed.site_id
        )
    charge.site_id = placed.site_id
    charge.accelerator_model = placed.accelerator_model
    charge.policy_revision = placed.explanation.policy_revision
    charge.price_krw_per_gpu_hour = placed.price_krw_per_gpu_hour
    charge.price_krw_per_million_input_tokens = placed.price_krw_per_million_input_tokens
    charge.price_krw_per_million_output_tokens = placed.price_krw_per_million_output_tokens
    settle(ctx, session, charge)


def on_job_completed(ctx: BillingContext, session: Session, event: JobCompletedEvent) -> None:
    # A forged end would bill a run before (or instead of) its usage.
    ctx.keyring.require(event, KeyRole.FACTORY, event.data.site_id)
    if not claim_event(session, CONSUMER, event):
        return
    done = event.data
    charge = _charge_for(session, str(done.job_id), done.attempt, done.tenant_id, done.site_id)
    charge.expected_reports = done.usage_reports
    settle(ctx, session, charge)


def on_usage_reported(ctx: BillingContext, session: Session, event: UsageReportedEvent) -> None:
    usage = event.data
    ctx.keyring.require(event, KeyRole.FACTORY, usage.site_id)
    job_id = str(usage.job_id)
    if usage.tenant_id != event.subject:
        raise PoisonMessage(f"usage for tenant {usage.tenant_id} sent with subject {event.subject}")
    # The dedup key (source, id) never hides other usage: reused for another interval or other amounts, it
    # is refused rather than taken for a redelivery.
    same_id = line_by_event(session, event.source, str(event.id))
    reported = Usage(usage.gpu_seconds, usage.input_tokens, usage.output_tokens)
    if same_id is not None and (
        same_id.tenant_id,
        same_id.job_id,
        same_id.attempt,
        same_id.seq,
        same_id.usage,
    ) != (usage.tenant_id, job_id, usage.attempt, usage.seq, reported):
        raise PoisonMessage(
            f"event id {event.id} from {event.source} already identifies other usage "
            f"(tenant {same_id.tenant_id}, job {same_id.job_id} run {same_id.attempt} seq {same_id.seq}, "
            f"{same_id.gpu_seconds} GPU-seconds)"
        )
    # Claimed in the same transaction as the ledger write: a failed write leaves it unclaimed.
    if not claim_event(session, CONSUMER, event):
        return
    existing = usage_line(session, job_id, usage.attempt, usage.seq)
    if existing is not None:
        if existing.usage != reported:
            raise PoisonMessage(
                f"usage seq {usage.seq} of job {job_id} run {usage.attempt} was already reported with "
                f"{existing.gpu_seconds} GPU-seconds, now {usage.gpu_seconds}"
            )
        return  # the same interval under another event id: counted once
    charge = _charge_for(session, job_id, usage.attempt, usage.tenant_id, usage.site_id)
    session.add(
        UsageLineRow(
            source=event.source,
            event_id=str(event.id),
            job_id=job_id,
            attempt=usage.attempt,
            tenant_id=usage.tenant_id,
            seq=usage.seq,
            gpu_seconds=usage.gpu_seconds,
            energy_wh=usage.energy_wh,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            interval_end=usage.interval_end,
        )
    )
    session.flush()
    settle(ctx, session, charge)


def open_invoice(session: Session, tenant_id: str, period: str) -> InvoiceRow:
    """The draft invoice that takes usage dated in `period`: that month's, or if it was already issued,
    the next draft after it (the usage becomes an adjustment there; an issued invoice never changes)."""
    while True:
        invoice = lock_invoice(session, tenant_id, period)
        if invoice.status == "draft":
            return invoice
        period = next_period(period)


def settle(ctx: BillingContext, session: Session, charge: ChargeRow) -> None:
    """Rate the usage lines that are next in sequence; bill the run when the last one is rated."""
    if charge.price_krw_per_gpu_hour is None or charge.accelerator_model is None:
        return  # the placement (and its locked prices) has not arrived yet
    rate = charge.rate
    log = get_logger(job_id=charge.job_id, attempt=charge.attempt, tenant_id=charge.tenant_id)
    for line in unrated_lines(session, charge.job_id, charge.attempt, charge.rated_seq):
        if line.seq != charge.rated_seq + 1:
            break  # a gap: an earlier interval is still on its way
        amount = interval_charge_krw(charge.rated_usage, line.usage, rate)
        usage_period = period_of(as_utc(line.interval_end))
        invoice = open_invoice(session, charge.tenant_id, usage_period)
        line.amount_krw = amount
        line.usage_period = usage_period
        line.invoice_period = invoice.period
        invoice.subtotal_krw += amount
        post(
            session,
            line.event_id,
            charge.job_id,
            postings_for(amount, ctx.fee_bps, charge.tenant_id, charge.site_id),
        )
        charge.rated_seq = line.seq
        charge.rated_gpu_seconds += line.gpu_seconds
        charge.rated_input_tokens += line.input_tokens
        charge.rated_output_tokens += line.output_tokens
        charge.rated_amount_krw += amount
        charge.rated_fee_krw += fee_krw(amount, ctx.fee_bps)
        rated = UsageRated(
            usage_event_id=uuid.UUID(line.event_id),
            usage_source=line.source,
            job_id=uuid.UUID(charge.job_id),
            tenant_id=charge.tenant_id,
            site_id=charge.site_id,
            accelerator_model=charge.accelerator_model,
            attempt=charge.attempt,
            seq=line.seq,
            gpu_seconds=line.gpu_seconds,
            energy_wh=line.energy_wh,
            input_tokens=line.input_tokens,
            output_tokens=line.output_tokens,
            price_krw_per_gpu_hour=rate.price_krw_per_gpu_hour,
            amount_krw=amount,
            charge_model="tokens" if rate.per_token else "gpu_hour",
            price_krw_per_million_input_tokens=rate.price_krw_per_million_input_tokens,
            price_krw_per_million_output_tokens=rate.price_krw_per_million_output_tokens,
            usage_period=usage_period,
            invoice_period=invoice.period,
        )
        add_to_outbox(
            session,
            UsageRatedEvent.create(source=SOURCE, subject=charge.tenant_id, data=rated),
            charge.tenant_id,
        )
        if invoice.period != usage_period:
            log.info("late_usage_adjusted", usage_period=usage_period, invoice_period=invoice.period)
        _announce_budget_thresholds(ctx, session, charge.tenant_id, invoice.period)
    if charge.billed or charge.expected_reports is None or charge.rated_seq < charge.expected_reports:
        return
    charge.billed = True
    billed = JobBilled(
        job_id=uuid.UUID(charge.job_id),
        tenant_id=charge.tenant_id,
        site_id=charge.site_id,
        accelerator_model=charge.accelerator_model,
        gpu_seconds=charge.rated_gpu_seconds,
        price_krw_per_gpu_hour=rate.price_krw_per_gpu_hour,
        amount_krw=charge.rated_amount_krw,
        marketplace_fee_krw=charge.rated_fee_krw,
        site_payable_krw=charge.rated_amount_krw - charge.rated_fee_krw,
        usage_reports=charge.rated_seq,
        attempt=charge.attempt,
    )
    add_to_outbox(
        session, JobBilledEvent.create(source=SOURCE, subject=charge.tenant_id, data=billed), charge.job_id
    )
    log.info("job_billed", amount_krw=charge.rated_amount_krw, usage_reports=charge.rated_seq)


def _announce_budget_thresholds(ctx: BillingContext, session: Session, tenant_id: str, period: str) -> None:
    tenant = ctx.tenants.get(tenant_id)
    if tenant is None or tenant.budget is None:
        return
    budget = tenant.budget
    scope = "all" if budget.kind == "prepaid" else period
    charged = charged_krw(session, tenant_id, None if budget.kind == "prepaid" else period)
    for percent in sorted(budget.alert_percents):
        if charged * 100 < budget.amount_krw * percent:
            break
        if session.get(BudgetAlertRow, (tenant_id, scope, percent)) is not None:
            continue
        session.add(
            BudgetAlertRow(tenant_id=tenant_id, scope=scope, threshold_percent=percent, charged_krw=charged)
        )
        crossed = BudgetThresholdCrossed(
            tenant_id=tenant_id,
            budget_kind=budget.kind,
            scope=scope,
            threshold_percent=percent,
            budget_krw=budget.amount_krw,
            charged_krw=charged,
        )
        add_to_outbox(
            session,
            BudgetThresholdCrossedEvent.create(source=SOURCE, subject=tenant_id, data=crossed),
            tenant_id,
        )
        get_logger(tenant_id=tenant_id).warning("budget_threshold_crossed", percent=percent, scope=scope)


class InvoiceError(Exception):
    """An invoice cannot be issued as asked; the message says why."""


def issue_invoice(
    ctx: BillingContext, session: Session, tenant_id: str, period: str, now: datetime
) -> InvoiceIssued:
    """Issue the tenant's invoice for the period: immutable from now on. Usage dated in it that arrives
    later goes to the next invoice as an adjustment."""
    invoice = lock_invoice(session, tenant_id, period)
    if invoice.status == "issued":
        raise InvoiceError(f"the invoice of {tenant_id} for {period} was issued at {invoice.issued_at}")
    issued = compose_invoice(ctx.tenants.get(tenant_id), invoice, invoice_lines(session, tenant_id, period))
    if issued.subtotal_krw != invoice.subtotal_krw:
        raise InvoiceError(
            f"the lines of {tenant_id}'s {period} invoice add up to {issued.subtotal_krw} KRW but its "
            f"running subtotal says {invoice.subtotal_krw}; run `sovereign billing check`"
        )
    post(
        session,
        f"invoice:{invoice.invoice_id}",
        None,
        invoice_postings(tenant_id, issued.volume_discount_krw, issued.vat_krw),
    )
    invoice.status = "issued"
    invoice.issued_at = now
    invoice.volume_discount_krw = issued.volume_discount_krw
    invoice.vat_krw = issued.vat_krw
    invoice.total_krw = issued.total_krw
    invoice.document = issued.model_dump(mode="json")
    add_to_outbox(
        session, InvoiceIssuedEvent.create(source=SOURCE, subject=tenant_id, data=issued), tenant_id
    )
    get_logger(tenant_id=tenant_id, period=period).info("invoice_issued", total_krw=issued.total_krw)
    return issued
