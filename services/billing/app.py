"""Billing's Kafka wiring."""

from __future__ import annotations

from functools import partial

from contracts.events import (
    BudgetThresholdCrossedEvent,
    InvoiceIssuedEvent,
    JobBilledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    UsageRatedEvent,
    UsageReportedEvent,
)
from services.billing import handlers
from services.billing.storage import TABLES
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import Keyring
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings

NAME = "billing"


def build(settings: Settings) -> Service:
    catalogue = load_catalogue(settings.catalogue_dir)
    service = new_service(NAME, settings, TABLES, catalogue.tenants)
    context = handlers.BillingContext(
        fee_bps=settings.marketplace_fee_bps,
        tenants=catalogue.tenants,
        keyring=Keyring.load(settings.keyring_path),
    )
    consume(
        service,
        {
            JobPlacedEvent: partial(handlers.on_job_placed, context),
            UsageReportedEvent: partial(handlers.on_usage_reported, context),
            JobCompletedEvent: partial(handlers.on_job_completed, context),
        },
    )
    # Invoices are issued by `sovereign invoice --issue` in billing's database; this relay publishes them.
    document_publishers(
        service.broker,
        [UsageRatedEvent, JobBilledEvent, InvoiceIssuedEvent, BudgetThresholdCrossedEvent],
        NAME,
    )
    return service
