"""One tenant's flood cannot hold another tenant's request: once a tenant has spent its allowance deciding in
a transaction, its further requests wait their turn, in its own order, and are decided a turn at a time,
each waiting tenant in rounds."""

from __future__ import annotations

from sqlmodel import Session, col, select

from contracts.events import JobPlacedEvent
from services.placement import handlers as placement
from services.placement.logic import JobState
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import JobRow
from services.shared.db import unit_of_work
from tests.conftest import request_event
from tests.storage_support import make_engine, offer_all, outbox, placement_context, stepping_timer


def states(engine: object, tenant: str) -> list[str]:
    with Session(engine) as session:  # type: ignore[arg-type]
        jobs = session.exec(
            select(JobRow).where(JobRow.tenant_id == tenant).order_by(col(JobRow.requested_at))
        )
        return [job.state for job in jobs]


def test_a_flood_waits_its_turns_and_another_tenant_is_decided_at_once(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    woken: list[bool] = []
    ctx = placement_context(
        timer=stepping_timer(0.03), tenant_allowance_ms=50, on_backlog=lambda: woken.append(True)
    )
    flood = [request_event("hanbit-ai", gpu_count=1) for _ in range(6)]
    with unit_of_work(engine) as session:
        for event in flood:
            placement.on_job_requested(ctx, session, event)
    # The first takes the whole allowance (each look at the clock 30 ms); the rest wait, the loop woken.
    assert states(engine, "hanbit-ai") == [JobState.PLACED] + [JobState.REQUESTED] * 5
    assert len(woken) == 5 and ctx.backlog
    # Another tenant's request, in the next batch, is decided at once; the flood's next one is not, nor
    # does it overtake the flood's waiting requests.
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request_event("mois", gpu_count=1))
        placement.on_job_requested(ctx, session, later := request_event("hanbit-ai", gpu_count=1))
    assert states(engine, "mois") == [JobState.PLACED]
    assert states(engine, "hanbit-ai")[-1] == JobState.REQUESTED
    # Turns decide the flood in its order, until none waits.
    turns = []
    while True:
        with unit_of_work(engine) as session:
            decided = placement.decide_in_turn(ctx, session)
        if not decided:
            break
        turns.append(decided)
    assert sum(turns) == 6 and set(states(engine, "hanbit-ai")) == {JobState.PLACED}
    assert not ctx.backlog  # the last turn found none waiting
    placed = [
        JobPlacedEvent.model_validate_json(row.payload).data.job_id for row in outbox(engine, "jobs.placed")
    ]
    hanbit = [e.data.job_id for e in [*flood, later]]
    assert [job for job in placed if job in hanbit] == hanbit


def test_a_turn_takes_each_waiting_tenant_in_rounds_the_oldest_first(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    ctx = placement_context(tenant_allowance_ms=0)  # every new request waits its turn
    events = [
        request_event(tenant, gpu_count=1) for tenant in ("hanbit-ai", "hanbit-ai", "mois", "hanbit-ai")
    ]
    with unit_of_work(engine) as session:
        for event in events:
            placement.on_job_requested(ctx, session, event)
    assert set(states(engine, "hanbit-ai") + states(engine, "mois")) == {JobState.REQUESTED}
    turn = placement_context(tenant_allowance_ms=60_000)
    with unit_of_work(engine) as session:
        assert placement.decide_in_turn(turn, session) == 4
    placed = [
        JobPlacedEvent.model_validate_json(row.payload).data.job_id for row in outbox(engine, "jobs.placed")
    ]
    assert placed == [events[index].data.job_id for index in (0, 2, 1, 3)]
