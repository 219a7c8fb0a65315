"""Governance's Kafka wiring: it keeps the tamper-evident log of every policy decision."""

from __future__ import annotations

from functools import partial

from contracts.events import (
    JobCancelledEvent,
    JobCompletedEvent,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    PolicyDecisionEvent,
    PolicyNonComplianceEvent,
    PolicyPublishedEvent,
    SiteSnapshotEvent,
)
from services.governance import handlers
from services.governance.storage import TABLES
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings
from services.shared.signing import Keyring

NAME = "governance"


def build(settings: Settings) -> Service:
    service = new_service(NAME, settings, TABLES)
    consume(
        service,
        {
            PolicyDecisionEvent: handlers.on_policy_decision,
            SiteSnapshotEvent: handlers.on_site_snapshot,
            PolicyPublishedEvent: partial(handlers.on_policy_published, Keyring.load(settings.keyring_path)),
            JobPlacedEvent: handlers.on_job_outcome,
            JobQueuedEvent: handlers.on_job_outcome,
            JobRejectedEvent: handlers.on_job_outcome,
            JobCompletedEvent: handlers.on_job_completed,
            JobCancelledEvent: handlers.on_job_cancelled,
        },
    )
    document_publishers(service.broker, [PolicyNonComplianceEvent], NAME)
    return service
