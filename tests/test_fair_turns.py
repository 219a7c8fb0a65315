"""One tenant's flood cannot hold another tenant's request: what tenants write is kept as it arrives and
handled in turns, each lane (the envelope's subject) in its own order, the lanes in rounds, a turn at most
its allowance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from contracts.events import JobPlacedEvent, JobRequestedEvent
from contracts.limits import MAX_ENVELOPE_BYTES
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.shared.arrivals import (
    LANE_LENGTH,
    TURN_SCAN,
    ArrivalRow,
    KeptRecord,
    Turns,
    claimed_subject,
    keep,
)
from services.shared.db import unit_of_work
from tests.conftest import request_event
from tests.storage_support import make_engine, offer_all, outbox, placement_context, stepping_timer


def record(value: bytes, offset: int, topic: str = "jobs.requested") -> Any:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"k", value=value, headers=[])


def kept(engine: Engine, values: list[bytes]) -> set[str]:
    with unit_of_work(engine) as session:
        return keep(session, [record(value, offset) for offset, value in enumerate(values)])


def numbers_handled() -> tuple[list[int], Callable[[Session, KeptRecord], None]]:
    """A handler that notes the number of each envelope it is given, and that list."""
    handled: list[int] = []

    def handle(session: Session, kept_record: KeptRecord) -> None:
        handled.append(json.loads(kept_record.value)["number"])

    return handled, handle


def unhurried() -> Turns:
    """Turns on a clock that stands still: each turn handles every record it reads."""
    return Turns(timer=stepping_timer(0.0))


def waiting(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(ArrivalRow)).one()


def placed_jobs(engine: Engine) -> list[object]:
    return [JobPlacedEvent.model_validate_json(r.payload).data.job_id for r in outbox(engine, "jobs.placed")]


def envelope(subject: str, number: int) -> bytes:
    return json.dumps({"subject": subject, "number": number}).encode()


def test_a_turn_takes_each_lane_in_rounds_the_oldest_lane_first(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    lanes = ["hanbit-ai", "hanbit-ai", "mois", "hanbit-ai", "mois"]
    kept(engine, [envelope(lane, number) for number, lane in enumerate(lanes)])
    handled: list[int] = []

    def handle(session: Session, kept_record: KeptRecord) -> None:
        handled.append(json.loads(kept_record.value)["number"])
        assert kept_record.topic == "jobs.requested" and kept_record.key == b"k"

    with unit_of_work(engine) as session:
        assert unhurried().take(session, handle) == 5
    assert handled == [0, 2, 1, 4, 3]
    assert waiting(engine) == 0
    with unit_of_work(engine) as session:
        assert unhurried().take(session, handle) == 0  # none kept: the caller stops looking


def test_a_turn_stops_at_its_allowance_and_leaves_the_rest_kept(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    kept(engine, [envelope("hanbit-ai", n) for n in range(5)])
    handled, handle = numbers_handled()
    # Every look at the clock finds 30 ms gone: the second record spends the 50 ms allowance.
    with unit_of_work(engine) as session:
        assert Turns(50, stepping_timer(0.03)).take(session, handle) == 2
    assert handled == [0, 1] and waiting(engine) == 3


def test_a_lane_whose_records_take_whole_turns_cannot_keep_another_waiting(
    database_url: tuple[str, str],
) -> None:
    """Each record spends a whole turn's allowance: the next turn starts with the lane served longest ago,
    so a record arriving behind a flood waits one turn, and the flood goes on after it."""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    kept(engine, [envelope("hanbit-ai", n) for n in range(4)])
    handled, handle = numbers_handled()
    turns = Turns(50, stepping_timer(0.06))
    with unit_of_work(engine) as session:
        assert turns.take(session, handle) == 1
    turns.noticed(kept(engine, [envelope("mois", 10), envelope("hanbit-ai", 11)]))
    for _ in range(3):
        with unit_of_work(engine) as session:
            assert turns.take(session, handle) == 1
    assert handled == [0, 10, 1, 2]


def test_a_record_behind_more_than_a_turn_reads_of_another_lane_is_read_for_the_next_turn(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    kept(engine, [envelope("hanbit-ai", n) for n in range(TURN_SCAN + 100)] + [envelope("mois", -1)])
    handled, handle = numbers_handled()
    with unit_of_work(engine) as session:
        assert Turns(50, stepping_timer(0.02)).take(session, handle) == 3
    assert handled == [0, -1, 1]


def test_a_turn_that_fails_leaves_its_records_kept_for_the_next(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    kept(engine, [envelope("mois", 0), envelope("mois", 1)])
    handled, handle = numbers_handled()

    def fail(session: Session, kept_record: KeptRecord) -> None:
        handle(session, kept_record)
        raise RuntimeError("the database went away")

    turns = unhurried()
    with pytest.raises(RuntimeError), unit_of_work(engine) as session:
        turns.take(session, fail)
    assert waiting(engine) == 2
    # The order the failed turn had read is forgotten with it: the next turn starts again at the oldest.
    with unit_of_work(engine) as session:
        assert turns.take(session, handle) == 2
    assert handled == [0, 0, 1]


def test_the_order_read_lasts_across_turns_until_a_lane_it_lacks_is_kept(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    kept(engine, [envelope("hanbit-ai", n) for n in range(3)])
    handled, handle = numbers_handled()
    turns = Turns(50, stepping_timer(0.06))
    with unit_of_work(engine) as session:
        assert turns.take(session, handle) == 1
    # A later record of a lane the order has waits for the order to be spent; a new lane goes first.
    turns.noticed(kept(engine, [envelope("hanbit-ai", 3)]))
    with unit_of_work(engine) as session:
        assert turns.take(session, handle) == 1
    turns.noticed(kept(engine, [envelope("mois", 10)]))
    while True:
        with unit_of_work(engine) as session:
            if not turns.take(session, handle):
                break
    assert handled == [0, 1, 10, 2, 3]


def test_a_flood_ahead_of_another_tenants_request_costs_it_one_turn(
    database_url: tuple[str, str], tmp_path: Path
) -> None:
    """Six of one tenant's requests, then another's: the first turn (two decisions' worth of allowance)
    decides the flood's first and then the other tenant's; the flood is decided in its own order."""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    ctx = placement_context()
    flood = [request_event("hanbit-ai", gpu_count=1) for _ in range(6)]
    other = request_event("mois", gpu_count=1)
    kept(engine, [event.model_dump_json().encode() for event in [*flood, other]])

    def handle(session: Session, kept_record: KeptRecord) -> None:
        placement.on_job_requested(ctx, session, JobRequestedEvent.from_received(kept_record.value))

    with unit_of_work(engine) as session:
        assert Turns(50, stepping_timer(0.03)).take(session, handle) == 2
    assert placed_jobs(engine) == [flood[0].data.job_id, other.data.job_id]
    while True:
        with unit_of_work(engine) as session:
            if not unhurried().take(session, handle):
                break
    flood_placed = [job for job in placed_jobs(engine) if job != other.data.job_id]
    assert flood_placed == [event.data.job_id for event in flood]


@given(
    value=st.one_of(
        st.binary(max_size=300),
        st.just(b"[" * 5000 + b"]" * 5000),
        st.just(b'{"subject": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        st.builds(lambda subject: json.dumps({"subject": subject}).encode(), st.text(max_size=1000)),
        st.builds(
            lambda subject: json.dumps({"subject": subject}).encode(),
            st.one_of(
                st.integers(), st.none(), st.lists(st.text(), max_size=3), st.just("s" * MAX_ENVELOPE_BYTES)
            ),
        ),
    )
)
def test_any_record_gets_a_lane_within_its_bound(value: bytes) -> None:
    """Whatever a record holds, reading its lane neither fails nor yields a lane past the column's bound;
    only a text subject names one."""
    lane = claimed_subject(value)
    assert isinstance(lane, str) and len(lane) <= LANE_LENGTH
    try:
        subject = json.loads(value).get("subject")
    except Exception:
        subject = None
    assert lane == (subject[:LANE_LENGTH] if isinstance(subject, str) else "")
