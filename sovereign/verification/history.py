"""Collecting a history for the invariant checker: every event on the topics (poison left out), every record
on the tenants' streams, and the rows of every service's database."""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import Session, SQLModel, select

from contracts import EVENT_MODELS, TOPICS, dead_letter_topic, model_for, stream_tenant, tenant_stream
from contracts.events import JobRequestedEvent
from services.billing.check import check_billing
from services.billing.storage import ChargeRow, PostingRow, UsageLineRow
from services.factory_agent.storage import RunRow
from services.governance.storage import DecisionLogEntry
from services.placement.storage import DecisionRow, JobRow, PoolRow
from services.registry import SERVICES
from services.shared.db import table_of
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import PolicyBundle
from services.shared.kafka import transport_security
from services.shared.outbox import OutboxMessage
from services.shared.settings import Settings
from sovereign.verification.databases import service_session
from sovereign.verification.invariants import DeadLetter, History
from sovereign.verification.watch import header, read_records


def _rows(session: Session, model: type[SQLModel]) -> list[dict[str, Any]]:
    return [row.model_dump() for row in session.exec(select(model))]


async def collect_history(settings: Settings) -> History:
    history = History()
    security = transport_security(settings)
    letters = await read_records(
        settings.bootstrap_servers, [dead_letter_topic(t) for t in TOPICS], security=security
    )
    poisoned = set()
    for record in letters:
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
        history.dead_letters.append(DeadLetter(record.topic, headers, record.value or b""))
        poisoned.add(
            (
                headers.get("dlq-original-topic"),
                headers.get("dlq-original-partition"),
                headers.get("dlq-original-offset"),
            )
        )
    for record in await read_records(settings.bootstrap_servers, TOPICS, security=security):
        if (record.topic, str(record.partition), str(record.offset)) in poisoned:
            continue
        try:
            event = EVENT_MODELS[record.topic].model_validate_json(record.value or b"")
        except ValidationError:
            continue  # not dead-lettered by its consumer: a topic no service consumes
        document = event.model_dump(mode="json")
        if isinstance(event, JobRequestedEvent):  # the job id derives from tenant and client request id
            document["data"]["job_id"] = str(event.data.job_id)
        history.events.setdefault(record.topic, []).append(document)
    tenants = load_catalogue(settings.catalogue_dir).tenants
    history.tenant_streams = {tenant: [] for tenant in tenants}
    streams = [tenant_stream(t) for t in tenants]
    for record in await read_records(settings.bootstrap_servers, streams, security=security):
        tenant = stream_tenant(record.topic)
        assert tenant is not None
        model = model_for(record.topic, header(record, "event_type"))
        # Only the outbox writes here: anything that is not an event a stream carries is itself a finding.
        streamed: dict[str, Any] = {"undecodable": (record.value or b"")[:200]}
        if model is not None:
            with contextlib.suppress(ValidationError):
                streamed = model.model_validate_json(record.value or b"").model_dump(mode="json")
        history.tenant_streams[tenant].append(streamed)
    history.known_revisions = {PolicyBundle.load(settings.policy_dir).revision} | {
        e["data"]["policy_revision"] for e in history.events.get("policy.published", [])
    }
    for service, entry in SERVICES.items():
        with service_session(settings, service, [table_of(OutboxMessage), *entry.tables]) as session:
            history.outbox_backlog[service] = session.exec(
                select(func.count()).select_from(OutboxMessage)
            ).one()
            if service == "placement":
                history.jobs = _rows(session, JobRow)
                history.pools = _rows(session, PoolRow)
                history.decisions = _rows(session, DecisionRow)
            elif service == "factory-agent":
                history.runs = _rows(session, RunRow)
            elif service == "billing":
                history.usage_lines = _rows(session, UsageLineRow)
                history.charges = _rows(session, ChargeRow)
                history.postings = _rows(session, PostingRow)
                history.billing_problems = check_billing(session, tenants).problems
            else:
                history.logged_decision_ids = set(session.exec(select(DecisionLogEntry.decision_id)))
    return history
