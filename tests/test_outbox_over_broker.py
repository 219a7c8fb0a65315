"""An outbox that cannot jam, on a real broker: a record the broker refuses for good is set aside with the
broker's reason, the records behind it are published, and the service is reported not ready until an
operator deals with it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.shared.arrivals import ARRIVAL_TABLES, ArrivalRow
from services.shared.db import create_service_engine, database_url_for, table_of, unit_of_work, utc_now
from services.shared.health import OUTBOX_STALE_AFTER, WorkerRow, mark_worker, register_worker
from services.shared.kafka import build_broker, publish_outbox_rows
from services.shared.outbox import OUTBOX_TABLES, OutboxMessage, OutboxRelay, OutboxSetAside, add_to_outbox
from sovereign.status import collect_status, render_status
from sovereign.verification.watch import each_record
from tests.conftest import request_event, service_settings

pytestmark = pytest.mark.broker

# Past the client's and the broker's 1 MiB limit on a record.
TOO_LARGE = 1_500_000


async def test_a_record_the_broker_refuses_is_set_aside_and_the_rest_are_delivered(
    kafka: str, tmp_path: Path
) -> None:
    settings = service_settings(kafka, tmp_path)
    engine = create_service_engine(
        database_url_for(settings, "placement"), "placement", [*OUTBOX_TABLES, table_of(WorkerRow)]
    )
    with unit_of_work(engine) as session:
        register_worker(session, "w1", [], "")
    mark_worker(engine, "w1", ready=True)
    before, after = request_event(), request_event()
    too_large_id = str(uuid.uuid4())
    with unit_of_work(engine) as session:
        add_to_outbox(session, before, "k")
    with unit_of_work(engine) as session:
        session.add(
            OutboxMessage(
                topic="jobs.requested",
                key="k",
                payload=b'{"padding": "' + b"x" * TOO_LARGE + b'"}',
                headers={"event_id": too_large_id},
            )
        )
    with unit_of_work(engine) as session:
        add_to_outbox(session, after, "k")
    broker = build_broker(settings, "placement")
    await broker.connect()
    try:
        relay = OutboxRelay(engine, partial(publish_outbox_rows, broker, frozenset()))
        assert await relay.drain() == 3
    finally:
        await broker.stop()
    arrived = [
        dict(record.headers or ()).get("event_id", b"").decode()
        async for record in each_record(kafka, ["jobs.requested"])
    ]
    assert arrived == [str(before.id), str(after.id)]  # in order, the refused one left out
    with Session(engine) as session:
        assert session.exec(select(OutboxMessage)).all() == []
        [kept] = session.exec(select(OutboxSetAside)).all()
    assert kept.headers["event_id"] == too_large_id and len(kept.payload) > TOO_LARGE
    assert kept.reason.startswith("jobs.requested refused it for good: MessageSizeTooLargeError")
    [status] = await collect_status(settings, ("placement",))
    assert not status.ready
    assert status.not_ready_because == [f"1 record(s) for jobs.requested set aside: {kept.reason}"]
    assert "not ready: 1 record(s) for jobs.requested set aside" in render_status([status])


async def test_a_record_kept_too_long_for_its_turn_makes_the_service_not_ready(
    kafka: str, tmp_path: Path
) -> None:
    """A kept record is consumed (no lag) but not yet answered: status counts it, and one waiting past
    the bound (turns that stopped) is a reason the service is not ready."""
    settings = service_settings(kafka, tmp_path)
    tables = [*OUTBOX_TABLES, table_of(WorkerRow), *ARRIVAL_TABLES]
    engine = create_service_engine(database_url_for(settings, "placement"), "placement", tables)
    with unit_of_work(engine) as session:
        register_worker(session, "w1", [], "")
    mark_worker(engine, "w1", ready=True)
    waited = OUTBOX_STALE_AFTER + timedelta(seconds=30)
    with unit_of_work(engine) as session:
        for age in (waited, timedelta(seconds=1)):
            session.add(
                ArrivalRow(
                    lane="mois",
                    topic="jobs.requested",
                    partition=0,
                    record_offset=0,
                    value=b"{}",
                    arrived_at=utc_now() - age,
                )
            )
    [status] = await collect_status(settings, ("placement",))
    assert status.kept == 2 and not status.ready
    [reason] = status.not_ready_because
    assert reason.startswith("the oldest kept record has waited 9") and "for its turn" in reason
    assert "kept 2" in render_status([status])
