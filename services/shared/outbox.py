"""Transactional outbox: events are written with the effect that caused them and published by a relay.

The relay leases a batch in one short transaction, publishes it, then deletes it in another. The lease keeps
a second relay on the same database (another worker of the service) off those rows; if the relay dies before
deleting, the lease expires and the batch is published again. Consumers are idempotent on event id, so that
repeat has no effect. A row the broker refuses for good (too large, invalid, not authorised) cannot jam the
rows behind it: it is moved to `outbox_set_aside` with the broker's reason, and `sovereign status` reports
the service not ready until an operator has dealt with it. Other failures are retried, backing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    LargeBinary,
    bindparam,
    delete,
    func,
    insert,
    or_,
    update,
)
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Field, Session, SQLModel, col, select

from contracts import AnyEvent, tenant_stream
from contracts.events import TOLD_TO_TENANT, dead_letter_topic
from services.shared.db import table_of, unit_of_work, utc_now
from services.shared.logging import get_logger


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    # A second topic the same event goes to: the stream of the tenant it is about, for what tenants are told.
    also_to: str | None = Field(default=None, max_length=200)
    key: str = Field(max_length=200)
    # Whom the event is about (its envelope's subject: a tenant, or a site): the relay takes a bounded share
    # of each lane into a batch, so one tenant's flood of events cannot hold up another's.
    lane: str = Field(default="", max_length=200)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utc_now)
    leased_by: str | None = Field(default=None, max_length=32)
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), index=True)
    )


class OutboxSetAside(SQLModel, table=True):
    """An outbox row the broker refused for good, kept with the reason: nothing is lost, and nothing waits
    behind it."""

    __tablename__ = "outbox_set_aside"

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int
    topic: str = Field(max_length=200)
    also_to: str | None = Field(default=None, max_length=200)
    key: str = Field(max_length=200)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime
    set_aside_at: datetime = Field(default_factory=utc_now)
    reason: str = Field(max_length=2000)


# What every service's database holds for its outbox.
OUTBOX_TABLES = [table_of(OutboxMessage), table_of(OutboxSetAside)]

_INSERT_OUTBOX = insert(table_of(OutboxMessage))
# The rows a transaction has written so far, inserted in one statement when it commits (one statement per
# row cost 76 µs a row on SQLite and 240 on PostgreSQL, one per batch of 50 rows 18 and 40:
# `python -m bench.statements`).
OUTBOX_ROWS = "outbox_rows"


def add_to_outbox(session: Session, event: AnyEvent, key: str) -> None:
    """Write the event for its topic and, if it is one the marketplace tells a tenant, for that tenant's
    stream too (one row, published to both)."""
    also_to = tenant_stream(event.data.tenant_id) if event.type in TOLD_TO_TENANT else None
    _insert(session, event.type, also_to, event, key)


def relay_to_tenant(session: Session, event: AnyEvent, key: str) -> None:
    """Write another party's event (a factory's report on a run) for its tenant's stream only, as the JSON
    it arrived as: the tenant checks the factory's signature over what the factory wrote."""
    _insert(session, tenant_stream(event.data.tenant_id), None, event, key, event.received)


def _insert(
    session: Session, topic: str, also_to: str | None, event: AnyEvent, key: str, payload: bytes | None = None
) -> None:
    headers = {"event_id": str(event.id), "event_type": event.type, "schema_version": event.schema_version}
    body = payload if payload is not None else event.model_dump_json().encode()
    _insert_row(session, topic, also_to, key, event.subject, body, headers)


def add_dead_letter(
    session: Session, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]
) -> None:
    """Write a record of `topic` its consumer refused to `<topic>.dlq` as it arrived, the reason in
    `headers`."""
    text_key = (key or b"").decode("utf-8", "replace")
    _insert_row(session, dead_letter_topic(topic), None, text_key, "", value, headers)


def _insert_row(
    session: Session,
    topic: str,
    also_to: str | None,
    key: str,
    lane: str,
    payload: bytes,
    headers: dict[str, str],
) -> None:
    # Plain INSERTs (no ORM objects) at the commit: rows keep the order they were added in, which the relay
    # publishes in.
    session.info.setdefault(OUTBOX_ROWS, []).append(
        {
            "topic": topic,
            "also_to": also_to,
            "key": key,
            "lane": lane,
            "payload": payload,
            "headers": headers,
            "created_at": utc_now(),
        }
    )


@sqlalchemy_event.listens_for(OrmSession, "before_commit")
def _insert_outbox_rows(session: OrmSession) -> None:
    if rows := session.info.pop(OUTBOX_ROWS, None):
        session.execute(_INSERT_OUTBOX, rows)


@sqlalchemy_event.listens_for(OrmSession, "after_rollback")
def _drop_outbox_rows(session: OrmSession) -> None:
    session.info.pop(OUTBOX_ROWS, None)


# Publishes rows in order and returns those the broker refused for good, by row id, with the reason; raises
# when the batch may succeed if tried again.
Publish = Callable[[Sequence[OutboxMessage]], Awaitable[Mapping[int, str]]]

# How many rows of one lane (one tenant's events, or one site's) a batch takes at most.
LANE_SHARE = 25
# Seconds between tries after a failed publish, doubling to the last.
RETRY_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def retry_pause(failures_before: int) -> float:
    """The pause after a publish that failed, when `failures_before` tries in a row failed before it."""
    return RETRY_BACKOFF_SECONDS[min(failures_before, len(RETRY_BACKOFF_SECONDS) - 1)]


class OutboxRelay:
    def __init__(
        self,
        engine: Engine,
        publish: Publish,
        poll_seconds: float = 0.5,
        batch_size: int = 500,
        lease_seconds: float = 10.0,
        after_publish: Callable[[], None] = lambda: None,
    ):
        self._engine = engine
        self._lease = timedelta(seconds=lease_seconds)
        self._publish = publish
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._after_publish = after_publish
        self._log = get_logger(component="outbox_relay")

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self.drain()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the relay must outlive a broker or database hiccup
                pause = retry_pause(failures)
                failures += 1
                self._log.warning("outbox_publish_failed", error=repr(error), retry_in_seconds=pause)
                await asyncio.sleep(pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_seconds)
            self._wakeup.clear()

    async def drain(self) -> int:
        published = 0
        while True:
            token = uuid.uuid4().hex
            with unit_of_work(self._engine) as session:
                batch = self._lease_batch(session, token)
            if not batch:
                return published
            refused = await self._publish(batch)
            self._after_publish()
            with unit_of_work(self._engine) as session:
                if refused:
                    self._set_aside(session, [row for row in batch if row.id in refused], refused)
                session.execute(_DELETE_LEASED, {"token": token})
            published += len(batch)
            self._log.debug("outbox_published", count=len(batch))

    def _set_aside(self, session: Session, rows: Sequence[OutboxMessage], reasons: Mapping[int, str]) -> None:
        for row in rows:
            assert row.id is not None
            reason = reasons[row.id][:2000]
            self._log.error(
                "outbox_record_set_aside",
                topic=row.topic,
                key=row.key,
                bytes=len(row.payload),
                event_id=row.headers.get("event_id"),
                reason=reason,
            )
            session.add(
                OutboxSetAside(
                    outbox_id=row.id,
                    topic=row.topic,
                    also_to=row.also_to,
                    key=row.key,
                    payload=row.payload,
                    headers=row.headers,
                    created_at=row.created_at,
                    reason=reason,
                )
            )
        session.flush()

    def _lease_batch(self, session: Session, token: str) -> list[OutboxMessage]:
        now = utc_now()
        params = {"now": now, "limit": self._batch_size, "share": LANE_SHARE}
        ids = list(session.execute(_FREE_IDS, params).scalars())
        if not ids:
            return []
        # Re-checked under the row lock: of two relays that saw the same rows, only one leases them.
        session.execute(_LEASE, {"ids": ids, "now": now, "token": token, "until": now + self._lease})
        return list(session.exec(_LEASED, params={"token": token}))


# The relay's statements, built once (every service runs them for every batch it publishes).
_FREE = or_(
    col(OutboxMessage.lease_expires_at).is_(None), col(OutboxMessage.lease_expires_at) < bindparam("now")
)
# Each lane's oldest free rows, at most LANE_SHARE of them, all lanes in row order: a lane's rows go out in
# the order they were written, and never more than its share of a batch while other lanes wait.
_BY_LANE = (
    select(
        col(OutboxMessage.id).label("id"),
        func.row_number()
        .over(partition_by=col(OutboxMessage.lane), order_by=col(OutboxMessage.id))
        .label("place"),
    )
    .where(_FREE)
    .subquery()
)
_FREE_IDS = (
    select(_BY_LANE.c.id)
    .where(_BY_LANE.c.place <= bindparam("share"))
    .order_by(_BY_LANE.c.id)
    .limit(bindparam("limit"))
)
_LEASE = (
    update(OutboxMessage)
    .where(col(OutboxMessage.id).in_(bindparam("ids", expanding=True)))
    .where(_FREE)
    .values(leased_by=bindparam("token"), lease_expires_at=bindparam("until"))
    .execution_options(synchronize_session=False)
)
_LEASED = (
    select(OutboxMessage).where(OutboxMessage.leased_by == bindparam("token")).order_by(col(OutboxMessage.id))
)
_DELETE_LEASED = delete(OutboxMessage).where(col(OutboxMessage.leased_by) == bindparam("token"))
