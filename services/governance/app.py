"""Governance's Kafka wiring: it keeps the tamper-evident log of every policy decision."""

from __future__ import annotations

from functools import partial

from contracts.events import (
    JobCancelledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    JobRequestedEvent,
    PolicyDecisionEvent,
    PolicyNonComplianceEvent,
    PolicyPublishedEvent,
    SiteSnapshotEvent,
)
from services.governance import handlers
from services.governance.storage import TABLES
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import Keyring
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings

NAME = "governance"


def build(settings: Settings) -> Service:
    catalogue = load_catalogue(settings.catalogue_dir)
    service = new_service(NAME, settings, TABLES, catalogue.tenants)
    keyring = Keyring.load(settings.keyring_path)
    consume(
        service,
        {
            JobRequestedEvent: partial(handlers.on_job_requested, keyring),
            PolicyDecisionEvent: handlers.on_policy_decision,
            SiteSnapshotEvent: handlers.on_site_snapshot,
            PolicyPublishedEvent: partial(handlers.on_policy_published, keyring),
            JobPlacedEvent: handlers.on_job_outcome,
            JobQueuedEvent: handlers.on_job_outcome,
            JobRejectedEvent: handlers.on_job_outcome,
            JobCompletedEvent: handlers.on_job_completed,
            JobCancelledEvent: handlers.on_job_cancelled,
        },
    )
    # Placement answers or dead-letters a request that is not a valid event; governance only reads requests.
    service.answers[JobRequestedEvent.model_fields["type"].default] = handlers.left_to_placement
    document_publishers(service.broker, [PolicyNonComplianceEvent], NAME)
    return service
