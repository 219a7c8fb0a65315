"""`sovereign replay SERVICE`: rebuild a service's database from its topics, read from offset zero.

For the services whose state is a function of the events they consume (billing, governance): after losing
a database, or to prove a database right, replay into a fresh one and compare. The events are fed through
the service's own handlers (in memory, no consumer group touched), in the order the broker stamped them.
The outbox the replay fills is discarded: those events were published the first time.
"""

from __future__ import annotations

from collections.abc import Callable

from faststream.kafka import TestKafkaBroker
from sqlalchemy import delete

from services.shared.db import unit_of_work
from services.shared.kafka import transport_security
from services.shared.outbox import OutboxMessage
from services.shared.runtime import Service
from services.shared.settings import Settings
from sovereign.verification.watch import read_records

REPLAYABLE = ("billing", "governance")


async def replay(build: Callable[[Settings], Service], source: Settings, target: Settings) -> int:
    """Feed every event the service consumes from source's broker into a service built on target's database;
    returns how many events were replayed."""
    service = build(target)
    records = await read_records(
        source.bootstrap_servers, service.consumed, security=transport_security(source)
    )
    records.sort(key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
    async with TestKafkaBroker(service.broker) as broker:
        for record in records:
            headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
            await broker.publish(record.value, record.topic, key=record.key, headers=headers)
    with unit_of_work(service.engine) as session:
        session.execute(delete(OutboxMessage))
    service.engine.dispose()
    return len(records)
