"""Idempotent consumers: the ids of processed events are stored in the transaction of their effect.

Keys are scoped by consumer and by event source, so two factories reusing an id never collide.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel

from contracts import AnyEvent
from services.shared.db import insert_ignoring_duplicates, table_of, utc_now


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    source: str = Field(primary_key=True, max_length=200)
    event_id: str = Field(primary_key=True, max_length=64)
    processed_at: datetime = Field(default_factory=utc_now)


def claim_event(session: Session, consumer: str, event: AnyEvent) -> bool:
    """Record the event as processed; False when it already was (a redelivery or a duplicate)."""
    return claim(session, consumer, event.source, str(event.id))


def claim(session: Session, consumer: str, source: str, event_id: str) -> bool:
    """Record (source, event_id) as processed by the consumer; False when it already was."""
    # One statement, before the effect: a concurrent duplicate waits here for the first to commit.
    return insert_ignoring_duplicates(
        session,
        table_of(ProcessedEvent),
        {"consumer": consumer, "source": source, "event_id": event_id, "processed_at": utc_now()},
    )
