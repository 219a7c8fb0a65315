"""Idempotent consumers: the ids of processed events are stored in the transaction of their effect.

Keys are scoped by consumer and by event source, so two factories reusing an id never collide.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel

from contracts import AnyEvent
from services.shared.db import utc_now


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    source: str = Field(primary_key=True, max_length=200)
    event_id: str = Field(primary_key=True, max_length=64)
    processed_at: datetime = Field(default_factory=utc_now)


def claim_event(session: Session, consumer: str, event: AnyEvent) -> bool:
    """Record the event as processed; False when it already was (a redelivery or a duplicate)."""
    key = (consumer, event.source, str(event.id))
    if session.get(ProcessedEvent, key) is not None:
        return False
    session.add(ProcessedEvent(consumer=consumer, source=event.source, event_id=str(event.id)))
    # Flush now so a concurrent duplicate fails here, inside the transaction, not after the effect.
    session.flush()
    return True
