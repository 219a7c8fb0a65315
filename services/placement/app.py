"""Placement's Kafka wiring: which events it consumes and publishes, and its queue sweep."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

from contracts.events import (
    WRITTEN_BY_TENANTS,
    CapacityOfferedEvent,
    CapacityRejectedEvent,
    CapacityUpdatedEvent,
    JobBilledEvent,
    JobCancelEvent,
    JobCancelledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    JobRequestedEvent,
    JobStartedEvent,
    PolicyDecisionEvent,
    PolicyPublishedEvent,
    SiteSnapshotEvent,
)
from services.placement import handlers
from services.placement.refusals import answer_invalid_envelope
from services.placement.storage import TABLES
from services.shared.db import unit_of_work
from services.shared.domain.attestation import load_auditor_keys
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, OpaServerEngine, PolicyBundle, PolicyEngine
from services.shared.domain.policy_check import activate_published
from services.shared.domain.signing import Keyring, Signer
from services.shared.kafka import subscriber_options
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings

NAME = "placement"
# How often queued jobs are re-planned even when no capacity event arrives (deadlines expire meanwhile).
QUEUE_SWEEP_SECONDS = 5.0


def build(settings: Settings) -> Service:
    catalogue = load_catalogue(settings.catalogue_dir)
    service = new_service(NAME, settings, TABLES, catalogue.tenants)
    bundle = PolicyBundle.load(settings.policy_dir)
    engine: PolicyEngine = (
        # The client gives up at the decision budget: a hanging server fails the decision closed in time.
        OpaServerEngine(settings.opa_url, bundle, timeout_seconds=settings.policy_budget_ms / 1000)
        if settings.opa_url
        else EmbeddedRegoEngine(bundle)
    )
    context = handlers.PlacementContext(
        worker_id=service.worker_id,
        policy=engine,
        tenants=catalogue.tenants,
        policy_budget_ms=settings.policy_budget_ms,
        queue_retry=timedelta(seconds=settings.queue_retry_seconds),
        auditor_keys=load_auditor_keys(settings.auditor_keys_path),
        keyring=Keyring.load(settings.keyring_path),
        signature_max_age=timedelta(seconds=settings.signature_max_age_seconds),
        attester=Signer.load(settings.attestation_key_path, settings.attestation_key_id)
        if settings.attestation_key_path
        else None,
    )
    consume(
        service,
        {
            JobRequestedEvent: partial(handlers.on_job_requested, context),
            CapacityOfferedEvent: partial(handlers.on_capacity_offered, context),
            CapacityUpdatedEvent: partial(handlers.on_capacity_updated, context),
            JobStartedEvent: partial(handlers.on_job_started, context),
            JobBilledEvent: handlers.on_job_billed,
            JobCompletedEvent: partial(handlers.on_job_completed, context),
            JobCancelEvent: partial(handlers.on_job_cancel, context),
        },
        # What tenants write is kept as it arrives and handled in turns, tenant by tenant (the envelope's
        # subject), in each tenant's order: one tenant's flood costs another's request a turn.
        arrival_topics=WRITTEN_BY_TENANTS,
    )
    # A tenant whose key signed a request or cancel that is not a valid event is told why.
    answer = partial(answer_invalid_envelope, context.keyring)
    service.answers.update(dict.fromkeys(WRITTEN_BY_TENANTS, answer))

    document_publishers(
        service.broker,
        [
            JobPlacedEvent,
            JobQueuedEvent,
            JobRejectedEvent,
            JobCancelledEvent,
            PolicyDecisionEvent,
            SiteSnapshotEvent,
            CapacityRejectedEvent,
        ],
        NAME,
        relayed_to_tenants=[JobStartedEvent, JobCompletedEvent],
    )

    # Every worker must switch, so each reads every published revision (from the start: the newest wins).
    async def policy_published(event: PolicyPublishedEvent) -> None:
        engine = await activate_published(context.policy, event, context.keyring)
        if engine is not None:
            context.policy = engine

    service.broker.subscriber(
        "policy.published",
        **subscriber_options(NAME, settings, broadcast_topic="policy.published"),
    )(policy_published)

    async def sweep_queue() -> None:
        while True:
            await asyncio.sleep(QUEUE_SWEEP_SECONDS)
            with unit_of_work(service.engine) as session:
                moved = handlers.sweep_queue(context, session)
            if moved:
                service.relay.wake()

    service.background.append(sweep_queue)
    return service
