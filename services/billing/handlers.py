"""Billing's transaction scripts: record placements, completions and usage; rate usage in sequence order
with the price locked at placement; post balanced ledger entries; bill a job once all its usage is rated."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlmodel import Session

from contracts.events import (
    JobBilled,
    JobBilledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    UsageRated,
    UsageRatedEvent,
    UsageReportedEvent,
)
from services.billing.rating import fee_krw, interval_charge_krw, postings_for
from services.billing.storage import (
    ChargeRow,
    PostingRow,
    UsageLineRow,
    lock_charge,
    unrated_lines,
    usage_line,
)
from services.shared.inbox import claim_event
from services.shared.kafka import PoisonMessage
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox

CONSUMER = "billing"
SOURCE = "service/billing"


@dataclass(frozen=True)
class BillingContext:
    fee_bps: int


def _charge_for(session: Session, job_id: str, attempt: int, tenant_id: str, site_id: str) -> ChargeRow:
    charge = lock_charge(session, job_id, attempt)
    if charge is None:
        charge = ChargeRow(job_id=job_id, attempt=attempt, tenant_id=tenant_id, site_id=site_id)
        session.add(charge)
        session.flush()
    elif charge.tenant_id != tenant_id:
        raise PoisonMessage(f"job {job_id} belongs to tenant {charge.tenant_id}, not {tenant_id}")
    return charge


def on_job_placed(ctx: BillingContext, session: Session, event: JobPlacedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    placed = event.data
    charge = _charge_for(session, str(placed.job_id), placed.attempt, placed.tenant_id, placed.site_id)
    charge.site_id = placed.site_id
    charge.accelerator_model = placed.accelerator_model
    charge.price_krw_per_gpu_hour = placed.price_krw_per_gpu_hour
    settle(ctx, session, charge)


def on_job_completed(ctx: BillingContext, session: Session, event: JobCompletedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    done = event.data
    charge = _charge_for(session, str(done.job_id), done.attempt, done.tenant_id, done.site_id)
    charge.expected_reports = done.usage_reports
    settle(ctx, session, charge)


def on_usage_reported(ctx: BillingContext, session: Session, event: UsageReportedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    usage = event.data
    job_id = str(usage.job_id)
    if usage.tenant_id != event.subject:
        raise PoisonMessage(f"usage for tenant {usage.tenant_id} sent with subject {event.subject}")
    existing = usage_line(session, job_id, usage.attempt, usage.seq)
    if existing is not None:
        if existing.gpu_seconds != usage.gpu_seconds:
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
        )
    )
    session.flush()
    settle(ctx, session, charge)


def settle(ctx: BillingContext, session: Session, charge: ChargeRow) -> None:
    """Rate the usage lines that are next in sequence; bill the job when the last one is rated."""
    price = charge.price_krw_per_gpu_hour
    if price is None or charge.accelerator_model is None:
        return  # the placement (and its locked price) has not arrived yet
    log = get_logger(job_id=charge.job_id, attempt=charge.attempt, tenant_id=charge.tenant_id)
    for line in unrated_lines(session, charge.job_id, charge.attempt, charge.rated_seq):
        if line.seq != charge.rated_seq + 1:
            break  # a gap: an earlier interval is still on its way
        amount = interval_charge_krw(charge.rated_gpu_seconds, line.gpu_seconds, price)
        line.amount_krw = amount
        for posting in postings_for(amount, ctx.fee_bps, charge.tenant_id, charge.site_id):
            session.add(
                PostingRow(
                    transaction_id=line.event_id,
                    job_id=charge.job_id,
                    account=posting.account,
                    amount_krw=posting.amount_krw,
                )
            )
        charge.rated_seq = line.seq
        charge.rated_gpu_seconds += line.gpu_seconds
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
            price_krw_per_gpu_hour=price,
            amount_krw=amount,
        )
        add_to_outbox(
            session,
            UsageRatedEvent.create(source=SOURCE, subject=charge.tenant_id, data=rated),
            charge.tenant_id,
        )
    if charge.billed or charge.expected_reports is None or charge.rated_seq < charge.expected_reports:
        return
    charge.billed = True
    billed = JobBilled(
        job_id=uuid.UUID(charge.job_id),
        tenant_id=charge.tenant_id,
        site_id=charge.site_id,
        accelerator_model=charge.accelerator_model,
        gpu_seconds=charge.rated_gpu_seconds,
        price_krw_per_gpu_hour=price,
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
