"""The shared plumbing on a real database, SQLite and PostgreSQL: the unit of work with its inbox and
outbox, concurrent reservations, the outbox relay."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import pytest
from sqlmodel import Session, select

from contracts.events import (
    CapacityOffered,
    JobRequestedEvent,
)
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import PoolRow, try_reserve, upsert_offer
from services.shared.db import table_of, unit_of_work
from services.shared.inbox import claim_event
from services.shared.outbox import (
    LANE_SHARE,
    OutboxMessage,
    OutboxRelay,
    OutboxSetAside,
    add_to_outbox,
    retry_pause,
)
from tests.conftest import request_event
from tests.storage_support import (
    CATALOGUE,
    make_engine,
    outbox,
)

# --- shared plumbing --------------------------------------------------------------------------------


def test_effect_outbox_and_inbox_commit_together_or_not_at_all(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "plumbing", [])
    event = request_event()
    with pytest.raises(RuntimeError), unit_of_work(engine) as session:
        assert claim_event(session, "c", event)
        add_to_outbox(session, event, "k")
        raise RuntimeError("crash before commit")
    assert outbox(engine) == []
    with unit_of_work(engine) as session:
        assert claim_event(session, "c", event)
        add_to_outbox(session, event, "k")
    with unit_of_work(engine) as session:
        assert not claim_event(session, "c", event), "a redelivered event must be recognised"
        assert claim_event(session, "another-consumer", event)
    [row] = outbox(engine)
    assert JobRequestedEvent.model_validate_json(row.payload) == event


def test_reservations_never_exceed_capacity_under_concurrency(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer = CATALOGUE.site_offer("skt-pangyo")
    assert offer is not None
    small = CapacityOffered(site=offer.site, pools=[offer.pools[0].model_copy(update={"gpu_count": 40})])
    with unit_of_work(engine) as session:
        upsert_offer(session, small)
    granted: list[int] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            gpus = rng.randint(1, 4)
            with unit_of_work(engine) as session:
                ok = try_reserve(session, "skt-pangyo-h100", gpus)
            if ok:
                with lock:
                    granted.append(gpus)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with Session(engine) as session:
        pool = session.get(PoolRow, "skt-pangyo-h100")
        assert pool is not None
        assert pool.reserved_gpus == sum(granted) <= 40
        assert pool.reserved_gpus >= 37  # 150 attempts of 1-4 GPUs fill all but a sliver


# --- outbox relay -----------------------------------------------------------------------------------


async def test_two_relays_on_one_database_publish_each_row_once(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "relay", [])
    with unit_of_work(engine) as session:
        for _ in range(120):
            add_to_outbox(session, request_event(), "k")
    published: list[str] = []

    async def publish(rows: Sequence[OutboxMessage]) -> dict[int, str]:
        await asyncio.sleep(0.01)  # a broker round trip, during which the other relay runs
        published.extend(row.headers["event_id"] for row in rows)
        return {}

    relays = [OutboxRelay(engine, publish, batch_size=7) for _ in range(2)]
    await asyncio.gather(*(relay.drain() for relay in relays))
    assert len(published) == len(set(published)) == 120
    assert outbox(engine) == []


async def test_a_batch_whose_publish_failed_is_published_again(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "relay", [])
    with unit_of_work(engine) as session:
        add_to_outbox(session, request_event(), "k")

    async def broker_down(rows: Sequence[OutboxMessage]) -> dict[int, str]:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        await OutboxRelay(engine, broker_down, lease_seconds=0).drain()
    delivered: list[OutboxMessage] = []

    async def broker_up(rows: Sequence[OutboxMessage]) -> dict[int, str]:
        delivered.extend(rows)
        return {}

    assert await OutboxRelay(engine, broker_up).drain() == 1
    assert len(delivered) == 1 and outbox(engine) == []


async def test_a_row_refused_for_good_is_set_aside_and_the_rows_behind_it_flow(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "relay", [table_of(OutboxSetAside)])
    events = [request_event() for _ in range(5)]
    with unit_of_work(engine) as session:
        for event in events:
            add_to_outbox(session, event, "k")
    refused_id = str(events[1].id)
    delivered: list[str] = []

    async def refusing(rows: Sequence[OutboxMessage]) -> dict[int, str]:
        """A broker that takes every row but one, which it will never take."""
        refused = {row.id: "jobs.requested refused it for good: too large" for row in rows if row.id}
        for row in rows:
            if row.headers["event_id"] != refused_id:
                delivered.append(row.headers["event_id"])
                del refused[row.id]  # type: ignore[arg-type]
        return refused

    assert await OutboxRelay(engine, refusing, batch_size=3).drain() == 5
    assert delivered == [str(e.id) for e in events if str(e.id) != refused_id]  # in order, none twice
    assert outbox(engine) == []
    with Session(engine) as session:
        [kept] = session.exec(select(OutboxSetAside)).all()
    assert (kept.topic, kept.key, kept.headers["event_id"]) == ("jobs.requested", "k", refused_id)
    assert kept.reason == "jobs.requested refused it for good: too large"
    assert kept.payload == events[1].model_dump_json().encode()
    assert await OutboxRelay(engine, refusing).drain() == 0  # never published again


def test_a_failing_relay_backs_off_to_half_a_minute() -> None:
    assert [retry_pause(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


async def test_one_tenants_flood_of_events_takes_only_its_share_of_a_batch(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "relay", [])
    flood = [request_event("hanbit-ai") for _ in range(3 * LANE_SHARE)]
    other = [request_event("mois") for _ in range(3)]
    with unit_of_work(engine) as session:
        for event in [*flood, *other]:
            add_to_outbox(session, event, str(event.data.job_id))
    batches: list[list[str]] = []

    async def publish(rows: Sequence[OutboxMessage]) -> dict[int, str]:
        batches.append([row.lane for row in rows])
        return {}

    assert await OutboxRelay(engine, publish, batch_size=2 * LANE_SHARE).drain() == len(flood) + len(other)
    # The other tenant's events go out in the first batch, behind no more than the flood's share.
    assert batches[0] == ["hanbit-ai"] * LANE_SHARE + ["mois"] * 3
    assert [len(batch) for batch in batches] == [LANE_SHARE + 3, LANE_SHARE, LANE_SHARE]
    assert outbox(engine) == []
