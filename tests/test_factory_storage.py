"""The factory agent's transaction scripts on a real database, SQLite and PostgreSQL: runs, cancels,
usage intervals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import select

from contracts.events import (
    CapacityOfferedEvent,
    JobCancelled,
    JobCancelledEvent,
    JobCompletedEvent,
    UsageReportedEvent,
)
from services.factory_agent import handlers as factory
from services.factory_agent.app import drive_runs_once
from services.factory_agent.backends import SimulatedBackend
from services.factory_agent.storage import TABLES as FACTORY_TABLES
from services.factory_agent.storage import RunRow, run_key
from services.shared.db import unit_of_work
from tests.conftest import placed_at_haenam
from tests.storage_support import (
    CATALOGUE,
    make_engine,
    outbox,
)

# --- factory agent ----------------------------------------------------------------------------------


def tick(
    engine: Engine, ctx: factory.FactoryContext, backend: SimulatedBackend, run_id: str, now: datetime
) -> None:
    """One turn of the agent's loop for a run: what the simulation says of it at `now`, reported."""
    with unit_of_work(engine) as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        factory.advance_run(ctx, session, run_id, backend.report_now(run, now))


def test_a_second_cancel_notice_before_the_placement_changes_nothing(database_url: tuple[str, str]) -> None:
    """Found by the fuzz tests: the second notice for a job not placed here yet failed on its primary key."""
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    ctx = factory.FactoryContext(offers={o.site.site_id: o for o in CATALOGUE.offers})
    job_id = uuid.uuid4()
    data = JobCancelled(job_id=job_id, tenant_id="mois", stage="placed", site_id="nacc-haenam", reason="x")
    for _ in range(2):
        with unit_of_work(engine) as session:
            factory.on_job_cancelled(
                ctx, session, JobCancelledEvent.create(source="service/placement", subject="mois", data=data)
            )
    with unit_of_work(engine) as session:
        factory.on_job_placed(ctx, session, placed_at_haenam(job_id))
    assert outbox(engine, "jobs.started") == []


def test_factory_stops_a_cancelled_run_and_reports_what_it_used(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    ctx = factory.FactoryContext(offers={o.site.site_id: o for o in CATALOGUE.offers})
    backend = SimulatedBackend(3600, {})
    running = placed_at_haenam(uuid.uuid4())
    running = running.model_copy(
        update={"data": running.data.model_copy(update={"pool_id": "nacc-haenam-b200", "expected_hours": 6})}
    )
    with unit_of_work(engine) as session:
        factory.on_job_placed(ctx, session, running)
    tick(
        engine, ctx, backend, run_key(str(running.data.job_id), 1), datetime.now(UTC) + timedelta(seconds=2.2)
    )  # two simulated hours pass: two intervals reported

    def cancelled(job_id: uuid.UUID) -> JobCancelledEvent:
        data = JobCancelled(job_id=job_id, tenant_id="mois", stage="placed", site_id="nacc-haenam")
        return JobCancelledEvent.create(source="service/placement", subject="mois", data=data)

    with unit_of_work(engine) as session:
        factory.on_job_cancelled(ctx, session, cancelled(running.data.job_id))
    tick(
        engine, ctx, backend, run_key(str(running.data.job_id), 1), datetime.now(UTC) + timedelta(hours=1)
    )  # later ticks report nothing more
    [completed] = [
        JobCompletedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.completed")
    ]
    assert completed.status == "cancelled"
    assert completed.usage_reports == len(outbox(engine, "usage.reported")) == 2
    # A cancel that arrives before the placement: the run never starts.
    early = placed_at_haenam(uuid.uuid4())
    early = early.model_copy(update={"data": early.data.model_copy(update={"pool_id": "nacc-haenam-b200"})})
    with unit_of_work(engine) as session:
        factory.on_job_cancelled(ctx, session, cancelled(early.data.job_id))
    with unit_of_work(engine) as session:
        factory.on_job_placed(ctx, session, early)
    assert len(outbox(engine, "jobs.started")) == 1
    last = JobCompletedEvent.model_validate_json(outbox(engine, "jobs.completed")[-1].payload).data
    assert last.job_id == early.data.job_id and last.status == "cancelled" and last.usage_reports == 0


def test_a_faulty_site_fails_the_run_halfway_and_reports_only_whole_intervals(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    offers = {o.site.site_id: o for o in CATALOGUE.offers}
    ctx = factory.FactoryContext(offers=offers)
    backend = SimulatedBackend(3600, {"nacc-haenam": 1.0})
    placed = placed_at_haenam(uuid.uuid4())
    # Long enough for six usage intervals, whatever the job's runtime factor.
    placed = placed.model_copy(
        update={"data": placed.data.model_copy(update={"pool_id": "nacc-haenam-b200", "expected_hours": 12})}
    )
    with unit_of_work(engine) as session:
        factory.on_job_placed(ctx, session, placed)
    tick(engine, ctx, backend, run_key(str(placed.data.job_id), 1), datetime.now(UTC) + timedelta(hours=1))
    [completed] = [
        JobCompletedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.completed")
    ]
    usage = [UsageReportedEvent.model_validate_json(r.payload).data for r in outbox(engine, "usage.reported")]
    assert completed.status == "failed" and completed.attempt == 1
    assert completed.usage_reports == len(usage) == 3  # six intervals planned, failed in the fourth
    assert completed.gpu_seconds == sum(u.gpu_seconds for u in usage)


def test_factory_reports_each_interval_once_and_completes(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    ctx = factory.FactoryContext(offers={o.site.site_id: o for o in CATALOGUE.offers})
    backend = SimulatedBackend(3600, {})
    placed = placed_at_haenam(uuid.uuid4())
    placed = placed.model_copy(
        update={"data": placed.data.model_copy(update={"pool_id": "nacc-haenam-b200"})}
    )
    with unit_of_work(engine) as session:
        factory.on_job_placed(ctx, session, placed)
    later = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(2):
        tick(engine, ctx, backend, run_key(str(placed.data.job_id), 1), later)
    usage = outbox(engine, "usage.reported")
    assert len(usage) >= 1
    assert len({row.headers["event_id"] for row in usage}) == len(usage)
    [completed] = outbox(engine, "jobs.completed")
    assert f'"usage_reports":{len(usage)}'.encode() in completed.payload
    assert len(outbox(engine, "jobs.started")) == 1


def test_each_pool_is_offered_at_what_its_backend_can_take_or_else_at_the_catalogues_size(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    ctx = factory.FactoryContext(offers={o.site.site_id: o for o in CATALOGUE.offers})
    catalogue = {pool.pool_id: pool.gpu_count for offer in CATALOGUE.offers for pool in offer.pools}
    # A node of 8 GPUs behind Haenam's pool; Sejong's two pools unknown and none usable (an offer has one).
    usable = {"nacc-haenam-b200": 8, "naver-sejong-b200": 0}
    with unit_of_work(engine) as session:
        offered = factory.offer_capacity(ctx, session, usable)
    assert offered == {**catalogue, "nacc-haenam-b200": 8}
    published = {
        pool.pool_id: pool.gpu_count
        for message in outbox(engine, "capacity.offered")
        for pool in CapacityOfferedEvent.model_validate_json(message.payload).data.pools
    }
    assert published == offered


def test_two_agents_on_one_database_each_take_and_drive_only_their_own_sites_runs(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    offers = {o.site.site_id: o for o in CATALOGUE.offers}
    haenam = factory.FactoryContext(offers={"nacc-haenam": offers["nacc-haenam"]})
    others = factory.FactoryContext(offers={s: o for s, o in offers.items() if s != "nacc-haenam"})
    placed = placed_at_haenam(uuid.uuid4())
    # The other sites' agent reads it first: not its site, so it leaves the event for Haenam's agent.
    for ctx in (others, haenam, haenam):
        with unit_of_work(engine) as session:
            factory.on_job_placed(ctx, session, placed)
    with unit_of_work(engine) as session:
        assert [run.job_id for run in factory.active_runs(session, haenam.offers)] == [
            str(placed.data.job_id)
        ]
        assert factory.active_runs(session, others.offers) == []


async def test_a_burst_of_placements_is_handed_over_a_few_a_pass_oldest_first_while_the_rest_are_reported(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "factory-agent", FACTORY_TABLES)
    ctx = factory.FactoryContext(offers={o.site.site_id: o for o in CATALOGUE.offers})
    backend = SimulatedBackend(3600, {})
    placed = [placed_at_haenam(uuid.uuid4()) for _ in range(3)]
    for event in placed:
        with unit_of_work(engine) as session:
            factory.on_job_placed(ctx, session, event)
    order = [str(event.data.job_id) for event in placed]
    for passes in (1, 2, 3):
        # No time for a second hand-over in a pass: one run a pass, and those handed over are reported.
        await drive_runs_once(engine, backend, ctx, submit_seconds=0.0)
        with unit_of_work(engine) as session:
            runs = {run.job_id: run for run in session.exec(select(RunRow))}
        assert [job for job in order if runs[job].submitted] == order[:passes]
        assert [job for job in order if runs[job].started_reported] == order[:passes]
