"""Governance's Kafka wiring: it keeps the tamper-evident log of every policy decision."""

from __future__ import annotations

from contracts.events import (
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    PolicyDecisionEvent,
    PolicyPublishedEvent,
)
from services.governance import handlers
from services.governance.storage import TABLES
from services.shared.runtime import Service, consume, new_service
from services.shared.settings import Settings

NAME = "governance"


def build(settings: Settings) -> Service:
    service = new_service(NAME, settings, TABLES)
    consume(service, PolicyDecisionEvent, handlers.on_policy_decision)
    consume(service, PolicyPublishedEvent, handlers.on_policy_published)
    consume(service, JobPlacedEvent, handlers.on_job_outcome)
    consume(service, JobQueuedEvent, handlers.on_job_outcome)
    consume(service, JobRejectedEvent, handlers.on_job_outcome)
    return service
