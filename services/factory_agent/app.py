"""The factory agent's wiring. It SIMULATES AI factories (scaled time, synthetic usage); see handlers.py."""

from __future__ import annotations

import asyncio
from functools import partial

from contracts.events import (
    CapacityOfferedEvent,
    JobCancelledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    JobStartedEvent,
    UsageReportedEvent,
)
from services.factory_agent import handlers
from services.factory_agent.storage import TABLES
from services.shared.db import unit_of_work, utc_now
from services.shared.domain.attestation import load_attestations
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import Signer
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings

NAME = "factory-agent"
TICK_SECONDS = 0.1


def build(settings: Settings) -> Service:
    catalogue = load_catalogue(settings.catalogue_dir)
    service = new_service(NAME, settings, TABLES, catalogue.tenants)
    wanted = set(settings.factory_sites)
    unknown = (wanted | set(settings.site_failure_rates)) - set(catalogue.site_ids)
    if unknown:
        raise ValueError(f"unknown sites for the factory agent: {', '.join(sorted(unknown))}")
    attestations = load_attestations(settings.site_attestations_path)
    context = handlers.FactoryContext(
        offers={
            o.site.site_id: o.model_copy(update={"attestation": attestations.get(o.site.site_id)})
            for o in catalogue.offers
            if not wanted or o.site.site_id in wanted
        },
        time_scale=settings.time_scale,
        failure_rates=settings.site_failure_rates,
        signer=Signer.load(settings.signing_key_path, settings.signing_key_id)
        if settings.signing_key_path
        else None,
    )
    # Offers go through the outbox like every other event: published as soon as the relay runs.
    service.on_start.append(partial(handlers.offer_capacity, context))
    consume(
        service,
        {
            JobPlacedEvent: partial(handlers.on_job_placed, context),
            JobCancelledEvent: partial(handlers.on_job_cancelled, context),
        },
    )
    document_publishers(
        service.broker, [CapacityOfferedEvent, JobStartedEvent, UsageReportedEvent, JobCompletedEvent], NAME
    )

    async def simulate() -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            with unit_of_work(service.engine) as session:
                run_ids = handlers.running_run_ids(session)
            emitted = 0
            for run_id in run_ids:
                with unit_of_work(service.engine) as session:
                    emitted += handlers.advance_run(context, session, run_id, utc_now())
            if emitted:
                service.relay.wake()

    service.background.append(simulate)
    return service
