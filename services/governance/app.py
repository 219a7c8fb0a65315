"""Governance's Kafka wiring: it keeps the tamper-evident log of every policy decision."""

from __future__ import annotations

from contracts.events import PolicyDecisionEvent
from services.governance import handlers
from services.governance.storage import TABLES
from services.shared.runtime import Service, consume, new_service
from services.shared.settings import Settings

NAME = "governance"


def build(settings: Settings) -> Service:
    service = new_service(NAME, settings, TABLES)
    consume(service, PolicyDecisionEvent, handlers.on_policy_decision)
    return service
