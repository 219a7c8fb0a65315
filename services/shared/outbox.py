"""Transactional outbox: events are written with the effect that caused them and published by a relay.

The relay reads a batch in one short transaction, publishes it, then deletes it in another. A crash in
between republishes the batch; consumers are idempotent on event id, so a repeat has no effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import JSON, Column, Engine, LargeBinary, delete
from sqlmodel import Field, Session, SQLModel, col, select

from contracts import Event
from services.shared.db import unit_of_work, utc_now
from services.shared.logging import get_logger


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    key: str = Field(max_length=200)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utc_now)


def add_to_outbox(session: Session, event: Event[BaseModel], key: str) -> None:
    session.add(
        OutboxMessage(
            topic=event.type,
            key=key,
            payload=event.model_dump_json().encode(),
            headers={"event_id": str(event.id), "event_type": event.type, "schema_version": event.schema_version},
        )
    )


Publish = Callable[[Sequence[OutboxMessage]], Awaitable[None]]


class OutboxRelay:
    def __init__(self, engine: Engine, publish: Publish, poll_seconds: float = 0.5, batch_size: int = 500):
        self._engine = engine
        self._publish = publish
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._log = get_logger(component="outbox_relay")

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the relay must outlive a broker or database hiccup
                self._log.warning("outbox_publish_failed", error=repr(error))
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_seconds)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def drain(self) -> int:
        published = 0
        while True:
            with unit_of_work(self._engine) as session:
                batch = list(
                    session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)).limit(self._batch_size))
                )
            if not batch:
                return published
            await self._publish(batch)
            with unit_of_work(self._engine) as session:
                ids = [row.id for row in batch]
                session.execute(delete(OutboxMessage).where(col(OutboxMessage.id).in_(ids)))
            published += len(batch)
            self._log.debug("outbox_published", count=len(batch))
            if len(batch) < self._batch_size:
                return published
