"""Helpers for the services' transaction-script tests on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from contracts.events import (
    CapacityOfferedEvent,
    JobCancelEvent,
    PolicyDecisionEvent,
    RuleViolation,
    SiteVerdict,
)
from services.placement import handlers as placement
from services.shared.db import create_service_engine, table_of, unit_of_work
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT
from sovereign.submit import cancel_event as tenant_cancel
from tests.conftest import KEYRING, TEST_KEYS

CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
SHARED = [table_of(OutboxMessage), table_of(ProcessedEvent)]


def make_engine(database_url: tuple[str, str], service: str, tables: list[Any]) -> Engine:
    url, prefix = database_url
    return create_service_engine(url, service, [*SHARED, *tables], schema_prefix=prefix)


def outbox(engine: Engine, topic: str | None = None) -> list[OutboxMessage]:
    with Session(engine) as session:
        query = select(OutboxMessage).order_by(col(OutboxMessage.id))
        if topic:
            query = query.where(OutboxMessage.topic == topic)
        return list(session.exec(query))


def placement_context(**overrides: Any) -> placement.PlacementContext:
    defaults: dict[str, Any] = {
        "keyring": KEYRING,
        "policy": EmbeddedRegoEngine(PolicyBundle.load(REPO_ROOT / "policies")),
        "tenants": CATALOGUE.tenants,
        # These tests are not about the policy's time budget (one is, and sets its own): on a loaded
        # machine a decision past the production budget would make a job wait.
        "policy_budget_ms": 60_000.0,
    }
    return placement.PlacementContext(**(defaults | overrides))


def stepping_timer(step_seconds: float) -> Callable[[], float]:
    """A decision timer on which every look finds `step_seconds` gone."""
    clock = [0.0]

    def timer() -> float:
        clock[0] += step_seconds
        return clock[0]

    return timer


def offer_all(engine: Engine, ctx: placement.PlacementContext) -> None:
    with unit_of_work(engine) as session:
        for offer in CATALOGUE.offers:
            placement.on_capacity_offered(
                ctx,
                session,
                TEST_KEYS.factory.sign(
                    CapacityOfferedEvent.create(source="factory/x", subject=offer.site.site_id, data=offer)
                ),
            )


def cancel_event(job_id: uuid.UUID, tenant: str = "mois") -> JobCancelEvent:
    return tenant_cancel(tenant, job_id, "no longer needed", TEST_KEYS.tenants[tenant])


def decision_event(job_id: uuid.UUID, tenant: str = "mois", rule: str = "RES-01") -> PolicyDecisionEvent:
    template = PolicyDecisionEvent.model_validate_json(
        (REPO_ROOT / "contracts/examples/policy.decisions.json").read_text()
    )
    verdicts = [
        SiteVerdict(site_id="seoul", allowed=True),
        SiteVerdict(
            site_id="tokyo",
            allowed=False,
            violations=[RuleViolation(rule=rule, message="tokyo is in JP", mode="deny")],
        ),
    ]
    data = template.data.model_copy(
        update={"decision_id": uuid.uuid4(), "job_id": job_id, "tenant_id": tenant, "sites": verdicts}
    )
    return PolicyDecisionEvent.create(source="service/placement", subject=tenant, data=data)
