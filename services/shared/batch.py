"""Handling a batch of consumed events in one transaction, each event inside a savepoint.

A consumer takes whatever its topic has ready (up to a limit) and commits the effects, outbox rows and inbox
rows of all of them at once, then its offsets: one commit shares its cost over the batch. The batch is
first applied without savepoints (on PostgreSQL each costs two round trips, and most batches hold no bad
event). If an event fails, that transaction is rolled back and the batch applied again with a savepoint per
event: the failing event rolls back to its savepoint only and is dead-lettered after the commit; the rest of
the batch stands. A database outage aborts the whole batch, which is then redelivered and, thanks to the
inbox, applied exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from contracts import AnyEvent
from contracts.events import WRITTEN_OUTSIDE
from contracts.limits import BROKER_MESSAGE_MAX_BYTES, MAX_ENVELOPE_BYTES
from services.shared.db import DEFERRED_TO_COMMIT, is_transient_database_error, unit_of_work
from services.shared.logging import get_logger
from services.shared.outbox import OUTBOX_ROWS

# A duplicate losing a race with another worker is retried this many times (the retry sees the winner's
# row and does nothing) before the event is dead-lettered, so an event that always collides cannot loop.
MAX_INTEGRITY_ATTEMPTS = 5

EventT = TypeVar("EventT", bound=AnyEvent)
# A consumed Kafka record (aiokafka's ConsumerRecord): topic, partition, offset, key, value, headers.
Record = Any
Refusal = tuple[Record, BaseException]


class PoisonMessage(ValueError):
    """A message that parses but can never be handled; it goes straight to the dead-letter topic."""


# How many of a record's field errors a reason names; the refusal to a tenant lists them all.
REASON_FIELD_ERRORS = 3


def refusal_reason(error: BaseException, topic: str) -> str:
    """Why a record was refused, as a sentence its sender can read: for a record that is not a valid event,
    its first members in error and what is wrong with each (never the value it held)."""
    if isinstance(error, ValidationError):
        details = error.errors(include_url=False, include_input=False)
        named = [f"{'.'.join(map(str, d['loc'])) or '(envelope)'}: {d['msg']}" for d in details]
        more = len(named) - REASON_FIELD_ERRORS
        return (
            f"the envelope is not a valid {topic} event: "
            + "; ".join(named[:REASON_FIELD_ERRORS])
            + (f"; and {more} more" if more > 0 else "")
        )
    return str(error) or type(error).__name__


def oversized(record: Record) -> PoisonMessage | None:
    """The refusal of a record over its topic's size limit (an outside party's envelope, or the broker's
    for what the services write: a valid decision is never refused for its size), or None."""
    size = len(record.value or b"")
    limit = MAX_ENVELOPE_BYTES if record.topic in WRITTEN_OUTSIDE else BROKER_MESSAGE_MAX_BYTES
    if size > limit:
        return PoisonMessage(
            f"the event is {size} bytes, over the {limit}-byte limit of an envelope on {record.topic}"
        )
    return None


def parse_records(
    model: type[EventT], records: Sequence[Record]
) -> tuple[list[tuple[Record, EventT]], list[Refusal]]:
    """Each record as an event of the topic's model, or refused with the reason (oversized, not JSON,
    not the schema)."""
    events: list[tuple[Record, EventT]] = []
    refused: list[Refusal] = []
    for record in records:
        if (too_big := oversized(record)) is not None:
            refused.append((record, too_big))
            continue
        try:
            events.append((record, model.from_received(record.value or b"")))
        except ValueError as error:  # pydantic's ValidationError, for bad JSON as for a wrong shape
            refused.append((record, error))
    return events, refused


def handle_batch(
    engine: Engine, handle: Callable[[Session, EventT], None], events: Sequence[tuple[Record, EventT]]
) -> list[Refusal]:
    """Apply the events in one transaction; returns those refused. If an event fails, the batch is applied
    again with each event in a savepoint; if the commit fails (or an action deferred to it; not for a
    database outage, which propagates), each event is applied again in a transaction of its own, and an
    event whose transaction still fails is refused."""
    try:
        with unit_of_work(engine) as session:
            for record, event in events:
                with _event_logged(record, event):
                    session.expunge_all()  # as in apply_in_savepoint
                    handle(session, event)
                    # Written now, as a savepoint's release would: the next event's expunge drops what is
                    # still pending.
                    session.flush()
        return []
    except Exception as error:
        if is_transient_database_error(error):
            raise
    try:
        with unit_of_work(engine) as session:
            applied = (apply_in_savepoint(session, handle, record, event) for record, event in events)
            return [refusal for refusal in applied if refusal is not None]
    except Exception as error:
        if is_transient_database_error(error):
            raise
        get_logger(component="batch").warning(
            "batch_failed_applying_one_by_one", events=len(events), error=repr(error)[:300]
        )
    refused: list[Refusal] = []
    for record, event in events:
        try:
            with unit_of_work(engine) as session:
                refusal = apply_in_savepoint(session, handle, record, event)
        except Exception as error:
            if is_transient_database_error(error):
                raise
            refusal = record, error
        if refusal is not None:
            refused.append(refusal)
    return refused


def _event_logged(record: Record, event: AnyEvent) -> AbstractContextManager[None]:
    """Log lines written while the event is handled say which event it was."""
    return structlog.contextvars.bound_contextvars(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event_id=str(getattr(event, "id", "")),
    )


def apply_in_savepoint(
    session: Session, handle: Callable[[Session, EventT], None], record: Record, event: EventT
) -> Refusal | None:
    with _event_logged(record, event):
        deferred = dict(session.info.get(DEFERRED_TO_COMMIT, {}))
        outbox_rows = list(session.info.get(OUTBOX_ROWS, []))
        attempt = 1
        while True:
            # Each event reads the database afresh, as in a transaction of its own: a row an earlier event
            # changed with a plain UPDATE could otherwise come back stale from the identity map (which holds
            # objects weakly, so only while something still refers to them).
            session.expunge_all()
            try:
                with session.begin_nested():
                    handle(session, event)
                return None
            except Exception as error:
                # What the event cached, deferred or wrote to the outbox goes with its rolled-back work.
                session.info.clear()
                if deferred:
                    session.info[DEFERRED_TO_COMMIT] = deferred
                if outbox_rows:
                    session.info[OUTBOX_ROWS] = list(outbox_rows)
                if is_transient_database_error(error):
                    raise
                if not isinstance(error, IntegrityError) or attempt == MAX_INTEGRITY_ATTEMPTS:
                    return record, error
                attempt += 1
