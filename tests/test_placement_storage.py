"""Placement's transaction scripts on a real database, SQLite and PostgreSQL: decisions, capacity,
budgets, retries, the sweep, cancels."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from contracts import tenant_stream
from contracts.events import (
    CapacityOffered,
    CapacityOfferedEvent,
    CapacityUpdated,
    CapacityUpdatedEvent,
    JobBilled,
    JobBilledEvent,
    JobCancelledEvent,
    JobCompleted,
    JobCompletedEvent,
    JobPlaced,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    JobRequestedEvent,
    JobStarted,
    JobStartedEvent,
)
from services.placement import handlers as placement
from services.placement.logic import offered_pools
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import DecisionRow, JobRow, PoolRow, committed_krw, load_pools
from services.shared.batch import PoisonMessage, handle_batch
from services.shared.db import unit_of_work
from services.shared.domain.catalogue import Budget
from services.shared.domain.policy import OutOfTime, PolicyBundle, PolicyEngineError
from services.shared.settings import Settings
from sovereign.job_commands import list_jobs
from tests.conftest import TEST_KEYS, request_event
from tests.storage_support import (
    CATALOGUE,
    cancel_event,
    make_engine,
    offer_all,
    outbox,
    placement_context,
)

# --- placement --------------------------------------------------------------------------------------


def test_placement_places_records_decision_and_ignores_duplicates(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    first = request_event("mois", client_id="same", csap_grade="medium", accelerator_model="B200")
    resubmitted = request_event("mois", client_id="same", csap_grade="medium", accelerator_model="B200")
    for event in (first, first, resubmitted):
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    [placed_row] = outbox(engine, "jobs.placed")
    placed = JobPlacedEvent.model_validate_json(placed_row.payload).data
    assert placed.site_id == "nacc-haenam"  # cheapest allowed B200 site with CSAP medium or better
    [decision_row] = outbox(engine, "policy.decisions")
    assert str(placed.explanation.decision_id) in decision_row.payload.decode()
    with Session(engine) as session:
        assert session.get(PoolRow, placed.pool_id).reserved_gpus == 8  # type: ignore[union-attr]


def complete_at_gwangju(
    engine: Engine,
    ctx: placement.PlacementContext,
    job_id: uuid.UUID,
    gpus: int,
    status: Literal["succeeded", "failed", "cancelled"] = "succeeded",
    event_id: uuid.UUID | None = None,
) -> None:
    """The factory's jobs.completed for a mois job's first run on the National AI Data Center's A100 pool."""
    at_gwangju = {"site_id": "nadc-gwangju", "pool_id": "nadc-gwangju-a100", "gpu_count": gpus, "attempt": 1}
    complete_run(engine, ctx, job_id, "mois", at_gwangju, status, event_id)


def completion(
    job_id: uuid.UUID,
    tenant_id: str,
    run: dict[str, Any],
    status: Literal["succeeded", "failed", "cancelled"],
    event_id: uuid.UUID | None = None,
) -> JobCompletedEvent:
    """The factory's jobs.completed for one run (site_id, pool_id, gpu_count, attempt), without usage."""
    done = JobCompleted(
        job_id=job_id, tenant_id=tenant_id, status=status, usage_reports=0, gpu_seconds=0, **run
    )
    return TEST_KEYS.factory.sign(
        JobCompletedEvent.create(
            source=f"factory/{run['site_id']}", subject=tenant_id, data=done, event_id=event_id
        )
    )


def complete_run(
    engine: Engine,
    ctx: placement.PlacementContext,
    job_id: uuid.UUID,
    tenant_id: str,
    run: dict[str, Any],
    status: Literal["succeeded", "failed", "cancelled"],
    event_id: uuid.UUID | None = None,
) -> None:
    with unit_of_work(engine) as session:
        placement.on_job_completed(ctx, session, completion(job_id, tenant_id, run, status, event_id))


def test_a_batch_reads_what_its_earlier_events_changed(database_url: tuple[str, str]) -> None:
    """A run fails and its retry ends, both in one batch: the second completion must see the retry's
    placement, made with plain UPDATEs by the first. (The session's identity map holds objects weakly, so
    a stale copy seldom survives from one event to the next; the batch clears it to make that certain.)"""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    request = request_event("hanbit-ai", max_attempts=2)
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request)
    [placed_row] = outbox(engine, "jobs.placed")
    placed = JobPlacedEvent.model_validate_json(placed_row.payload).data
    # The retry goes to the runner-up: the same verdicts, the failed site left out.
    runner_up = next(site for site in placed.explanation.sites if site.rank == 2)
    first = {"site_id": placed.site_id, "pool_id": placed.pool_id, "gpu_count": 8, "attempt": 1}
    second = {"site_id": runner_up.site_id, "pool_id": runner_up.pool_id, "gpu_count": 8, "attempt": 2}
    job_id = request.data.job_id
    batch = [
        (SimpleNamespace(topic="jobs.completed", partition=0, offset=offset), event)
        for offset, event in enumerate(
            [
                completion(job_id, "hanbit-ai", first, "failed"),
                completion(job_id, "hanbit-ai", second, "succeeded"),
            ]
        )
    ]
    assert handle_batch(engine, partial(placement.on_job_completed, ctx), batch) == []
    with Session(engine) as session:
        job = session.get(JobRow, str(job_id))
        assert job is not None and (job.state, job.attempt, job.site_id) == (
            "completed",
            2,
            runner_up.site_id,
        )
        assert session.get(PoolRow, runner_up.pool_id).reserved_gpus == 0  # type: ignore[union-attr]


def one_placed_one_queued_at_gwangju(
    database_url: tuple[str, str],
) -> tuple[Engine, placement.PlacementContext, JobRequestedEvent, JobRequestedEvent]:
    """The ministry's high-grade A100 jobs fit only Gwangju's 640-GPU pool: 600 GPUs placed, 100 queued."""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    big = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=600)
    waiting = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=100)
    for event in (big, waiting):
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    return engine, ctx, big, waiting


def test_a_queued_job_is_not_decided_again_for_capacity_it_cannot_use(database_url: tuple[str, str]) -> None:
    engine, ctx, big, waiting = one_placed_one_queued_at_gwangju(database_url)

    def decisions_of_waiting() -> int:
        with Session(engine) as session:
            query = (
                select(func.count())
                .select_from(DecisionRow)
                .where(DecisionRow.job_id == str(waiting.data.job_id))
            )
            return session.exec(query).one()

    offer = CATALOGUE.site_offer("skt-pangyo")
    assert offer is not None
    grown = CapacityUpdated(
        site_id="skt-pangyo", pool_id=offer.pools[0].pool_id, status="available", gpu_count=5000
    )
    with unit_of_work(engine) as session:
        placement.on_capacity_updated(
            ctx,
            session,
            TEST_KEYS.factory.sign(
                CapacityUpdatedEvent.create(source="factory/skt-pangyo", subject="skt-pangyo", data=grown)
            ),
        )
    assert decisions_of_waiting() == 1, "capacity at a site its decision denied does not re-decide it"
    complete_at_gwangju(engine, ctx, big.data.job_id, 600)
    assert decisions_of_waiting() == 2
    with Session(engine) as session:
        assert session.get(JobRow, str(waiting.data.job_id)).state == "placed"  # type: ignore[union-attr]


def test_a_site_offered_anew_can_take_a_queued_job_at_once(database_url: tuple[str, str]) -> None:
    engine, ctx, _, waiting = one_placed_one_queued_at_gwangju(database_url)
    gwangju = CATALOGUE.site_offer("nadc-gwangju")
    assert gwangju is not None
    # A second Gwangju hall with the same certified attributes comes online.
    site = gwangju.site.model_copy(update={"site_id": "nadc-gwangju-2"})
    pools = [
        p.model_copy(update={"pool_id": p.pool_id.replace("nadc-gwangju", "nadc-gwangju-2")})
        for p in gwangju.pools
    ]
    hall = CapacityOffered(site=site, pools=pools)
    with unit_of_work(engine) as session:
        placement.on_capacity_offered(
            ctx,
            session,
            TEST_KEYS.factory.sign(
                CapacityOfferedEvent.create(source="factory/x", subject=site.site_id, data=hall)
            ),
        )
    with Session(engine) as session:
        job = session.get(JobRow, str(waiting.data.job_id))
        assert job is not None and (job.state, job.site_id) == ("placed", "nadc-gwangju-2")


def test_budget_commitments_follow_estimates_retries_and_bills(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    request = request_event("hanbit-ai", max_attempts=2)
    job_id = str(request.data.job_id)

    def committed() -> int:
        """The running total, checked against its definition: the sum over the tenant's jobs."""
        with Session(engine) as session:
            running = committed_krw(session, "hanbit-ai", None)
            total = select(func.sum(col(JobRow.estimate_krw) + col(JobRow.billed_krw))).where(
                JobRow.tenant_id == "hanbit-ai"
            )
            assert running == session.exec(total).one()
            return running

    def job() -> JobRow:
        with Session(engine) as session:
            row = session.get(JobRow, job_id)
            assert row is not None
            return row

    def bill(attempt: int, amount: int) -> None:
        data = JobBilled(
            job_id=request.data.job_id,
            tenant_id="hanbit-ai",
            site_id="x",
            accelerator_model="B200",
            gpu_seconds=1,
            price_krw_per_gpu_hour=1,
            amount_krw=amount,
            marketplace_fee_krw=0,
            site_payable_krw=amount,
            usage_reports=1,
            attempt=attempt,
        )
        with unit_of_work(engine) as session:
            placement.on_job_billed(
                session, JobBilledEvent.create(source="service/billing", subject="hanbit-ai", data=data)
            )

    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request)
    first = job()
    assert first.estimate_krw > 0 and committed() == first.estimate_krw
    run = {"site_id": first.site_id, "pool_id": first.pool_id, "gpu_count": first.gpu_count, "attempt": 1}
    complete_run(engine, ctx, request.data.job_id, "hanbit-ai", run, "failed")
    second = job()
    assert second.attempt == 2 and second.site_id != first.site_id
    assert committed() == second.estimate_krw, "the failed run's estimate is gone, the retry's counts"
    bill(1, 1_000)  # the failed run's bill adds to the retry's estimate
    assert committed() == second.estimate_krw + 1_000
    bill(2, 2_000)  # the retry's bill replaces its estimate
    assert committed() == 3_000


def test_a_run_whose_estimate_equals_what_is_left_of_the_budget_is_placed_one_won_more_is_not(
    database_url: tuple[str, str],
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    tenant = CATALOGUE.tenants["hanbit-ai"]

    def place(budget_krw: int | None) -> JobRow:
        budget = None if budget_krw is None else Budget(kind="prepaid", amount_krw=budget_krw)
        budgeted = {**CATALOGUE.tenants, "hanbit-ai": tenant.model_copy(update={"budget": budget})}
        request = request_event("hanbit-ai")
        with unit_of_work(engine) as session:
            placement.on_job_requested(placement_context(tenants=budgeted), session, request)
        with Session(engine) as session:
            job = session.get(JobRow, str(request.data.job_id))
            assert job is not None
            return job

    first = place(None)
    estimate = first.estimate_krw
    assert first.state == "placed" and estimate > 0
    exact = place(2 * estimate)  # what is left, after the first job's estimate, is exactly this one's
    assert exact.state == "placed" and exact.estimate_krw == estimate
    assert place(3 * estimate - 1).state == "rejected"


def test_completion_releases_capacity_and_places_the_queued_job(database_url: tuple[str, str]) -> None:
    engine, ctx, big, waiting = one_placed_one_queued_at_gwangju(database_url)
    with Session(engine) as session:
        assert session.get(JobRow, str(waiting.data.job_id)).state == "queued"  # type: ignore[union-attr]
    for _ in range(2):  # a redelivered completion releases nothing twice
        complete_at_gwangju(engine, ctx, big.data.job_id, 600, event_id=uuid.UUID(int=7))
    with Session(engine) as session:
        assert session.get(JobRow, str(waiting.data.job_id)).state == "placed"  # type: ignore[union-attr]
        assert session.get(PoolRow, "nadc-gwangju-a100").reserved_gpus == 100  # type: ignore[union-attr]
    assert len(outbox(engine, "jobs.queued")) == 1


def fail_run(engine: Engine, ctx: placement.PlacementContext, placed: JobPlaced) -> None:
    run = placed.model_dump(include={"site_id", "pool_id", "gpu_count", "attempt"})
    complete_run(engine, ctx, placed.job_id, placed.tenant_id, run, "failed")


def placements(engine: Engine) -> list[JobPlaced]:
    return [JobPlacedEvent.model_validate_json(row.payload).data for row in outbox(engine, "jobs.placed")]


def test_a_failed_run_is_retried_on_another_site_up_to_the_jobs_limit(
    database_url: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    request = request_event("hanbit-ai", gpu_count=8, max_attempts=2)
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request)
    [first] = placements(engine)
    started = JobStarted.model_validate(
        first.model_dump(include={"job_id", "tenant_id", "site_id", "pool_id", "gpu_count"})
    )
    with unit_of_work(engine) as session:
        placement.on_job_started(
            ctx,
            session,
            TEST_KEYS.factory.sign(
                JobStartedEvent.create(source="factory/x", subject=first.tenant_id, data=started)
            ),
        )
    with Session(engine) as session:
        assert session.get(JobRow, str(first.job_id)).state == "running"  # type: ignore[union-attr]
    fail_run(engine, ctx, first)
    fail_run(engine, ctx, first)  # a stale repeat of the first run's end changes nothing
    [_, second] = placements(engine)
    assert (second.attempt, second.failed_sites) == (2, [first.site_id])
    assert second.site_id != first.site_id
    failed_there = next(s for s in second.explanation.sites if s.site_id == first.site_id)
    assert any("an earlier run of this job failed" in r for r in failed_there.capacity_reasons)
    with Session(engine) as session:
        assert session.get(PoolRow, first.pool_id).reserved_gpus == 0  # type: ignore[union-attr]
        assert session.get(PoolRow, second.pool_id).reserved_gpus == 8  # type: ignore[union-attr]
    url, prefix = database_url
    assert list_jobs(Settings(database_url=url, database_schema_prefix=prefix), "placed", None) == 0
    assert f"run 2 (failed before at {first.site_id})" in capsys.readouterr().out
    fail_run(engine, ctx, second)  # the job allowed two runs: it has failed
    assert len(placements(engine)) == 2
    with Session(engine) as session:
        job = session.get(JobRow, str(request.data.job_id))
        assert job is not None and (job.state, job.attempt) == ("failed", 2)
        assert session.get(PoolRow, second.pool_id).reserved_gpus == 0  # type: ignore[union-attr]


def test_capacity_updates_resize_pause_and_withdraw_a_pool(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)

    def update(**fields: Any) -> None:
        data = CapacityUpdated(site_id="nadc-gwangju", pool_id="nadc-gwangju-a100", **fields)
        event = TEST_KEYS.factory.sign(
            CapacityUpdatedEvent.create(source="factory/nadc-gwangju", subject="nadc-gwangju", data=data)
        )
        with unit_of_work(engine) as session:
            placement.on_capacity_updated(ctx, session, event)

    def request(gpus: int) -> JobRequestedEvent:
        # High-grade A100 work fits only Gwangju's pool.
        event = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=gpus)
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
        return event

    def state(event: JobRequestedEvent) -> str:
        with Session(engine) as session:
            job = session.get(JobRow, str(event.data.job_id))
            assert job is not None
            return f"{job.state}: {job.reason}"

    def why_gwangju_waits(event: JobRequestedEvent) -> list[str]:
        queued = [JobQueuedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.queued")]
        [mine] = [q for q in queued if q.job_id == event.data.job_id]
        return next(s.capacity_reasons for s in mine.explanation.sites if s.site_id == "nadc-gwangju")

    big = request(600)
    update(status="available", gpu_count=500)  # shrunk below what is reserved: nothing is free
    small = request(50)
    assert state(big).startswith("placed") and state(small).startswith("queued")
    assert why_gwangju_waits(small) == ["nadc-gwangju-a100 has 0 of 500 GPUs free, the job needs 50"]
    update(status="available", gpu_count=700)  # grown again: the waiting job takes the new room
    assert state(small).startswith("placed")
    update(status="maintenance")
    paused = request(10)
    assert why_gwangju_waits(paused) == ["nadc-gwangju-a100 is in maintenance"]
    update(status="withdrawn")  # gone for good: the waiting job can never run, and is told so
    assert state(paused).startswith("rejected") and "nadc-gwangju-a100 is withdrawn" in state(paused)
    with Session(engine) as session:
        pool = session.get(PoolRow, "nadc-gwangju-a100")
        assert pool is not None and (pool.total_gpus, pool.reserved_gpus) == (700, 650)


def test_the_sweep_expires_deadlines_without_deciding_again(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    blocker = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=640)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting = request_event(
        "mois", csap_grade="high", accelerator_model="A100", gpu_count=8, expected_hours=0.5, deadline=soon
    )
    for event in (blocker, waiting):
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    decisions = len(outbox(engine, "policy.decisions"))
    with unit_of_work(engine) as session:  # recently planned, deadline ahead: nothing to do
        assert placement.sweep_queue(ctx, session) == 0
    assert len(outbox(engine, "policy.decisions")) == decisions
    later = placement_context(clock=lambda: datetime.now(UTC) + timedelta(hours=2))
    with unit_of_work(engine) as session:
        assert placement.sweep_queue(later, session) == 1
    [rejected] = outbox(engine, "jobs.rejected")
    assert b'"deadline_passed"' in rejected.payload and b"while it waited" in rejected.payload
    assert len(outbox(engine, "policy.decisions")) == decisions


def test_a_higher_priority_job_takes_freed_capacity_first(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    high_grade = {"csap_grade": "high", "accelerator_model": "A100"}
    blocker = request_event("mois", gpu_count=640, **high_grade)
    normal = request_event("mois", gpu_count=600, **high_grade)
    urgent = request_event("mois", gpu_count=600, priority="urgent", **high_grade)
    for event in (blocker, normal, urgent):  # the urgent job arrives last
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    complete_at_gwangju(engine, ctx, blocker.data.job_id, 640)
    with Session(engine) as session:
        assert session.get(JobRow, str(urgent.data.job_id)).state == "placed"  # type: ignore[union-attr]
        assert session.get(JobRow, str(normal.data.job_id)).state == "queued"  # type: ignore[union-attr]


def test_jobs_command_shows_queue_positions_by_priority(
    database_url: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    high_grade = {"csap_grade": "high", "accelerator_model": "A100"}
    events = [
        request_event("mois", gpu_count=640, **high_grade),
        request_event("mois", gpu_count=64, **high_grade),
        request_event("mois", gpu_count=32, priority="high", **high_grade),
        request_event("nobody"),
    ]
    for event in events:
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    url, prefix = database_url
    assert list_jobs(Settings(database_url=url, database_schema_prefix=prefix), None, None) == 0
    lines = capsys.readouterr().out.splitlines()
    queued = [line for line in lines if "in queue" in line]
    assert str(events[2].data.job_id) in queued[0] and "#1 in queue" in queued[0]
    assert str(events[1].data.job_id) in queued[1] and "#2 in queue" in queued[1]
    assert any("nadc-gwangju (nadc-gwangju-a100) at 2,100 KRW/GPU-h" in line for line in lines)
    assert any("not in the tenant registry" in line for line in lines)
    list_jobs(Settings(database_url=url, database_schema_prefix=prefix), "queued", "nobody")
    assert "0 jobs" in capsys.readouterr().out


def test_cancel_at_every_stage(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    high_grade = {"csap_grade": "high", "accelerator_model": "A100"}
    running = request_event("mois", gpu_count=640, **high_grade)
    waiting = request_event("mois", gpu_count=8, **high_grade)
    early = request_event("mois", gpu_count=8, **high_grade)
    for event in (running, waiting):
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    for job_id in (waiting.data.job_id, running.data.job_id, early.data.job_id):
        with unit_of_work(engine) as session:
            placement.on_job_cancel(ctx, session, cancel_event(job_id))
    with unit_of_work(engine) as session:  # the request that its cancel overtook
        placement.on_job_requested(ctx, session, early)
    stages = {
        JobCancelledEvent.model_validate_json(r.payload).data.stage for r in outbox(engine, "jobs.cancelled")
    }
    assert stages == {"queued", "placed", "before_request"}
    with Session(engine) as session:
        states = [session.get(JobRow, str(e.data.job_id)).state for e in (running, waiting, early)]  # type: ignore[union-attr]
        assert states == ["cancelling", "cancelled", "cancelled"]
        # The running job keeps its GPUs until its factory confirms it stopped.
        assert session.get(PoolRow, "nadc-gwangju-a100").reserved_gpus == 640  # type: ignore[union-attr]
    complete_at_gwangju(engine, ctx, running.data.job_id, 640, status="cancelled")
    with Session(engine) as session:
        assert session.get(JobRow, str(running.data.job_id)).state == "cancelled"  # type: ignore[union-attr]
        assert session.get(PoolRow, "nadc-gwangju-a100").reserved_gpus == 0  # type: ignore[union-attr]
    assert (
        len(outbox(engine, "jobs.placed")) == 1
    )  # neither the cancelled waiter nor the early one was placed
    with unit_of_work(engine) as session:  # too late: nothing happens
        placement.on_job_cancel(ctx, session, cancel_event(running.data.job_id))
    assert len(outbox(engine, "jobs.cancelled")) == 3


def test_a_tenant_cannot_cancel_another_tenants_job(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    job = request_event("mois", csap_grade="medium")
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, job)
    with unit_of_work(engine) as session:
        placement.on_job_cancel(ctx, session, cancel_event(job.data.job_id, tenant="hanbit-ai"))
        placement.on_job_cancel(ctx, session, cancel_event(uuid.uuid4(), tenant="hanbit-ai"))
    with Session(engine) as session:
        assert session.get(JobRow, str(job.data.job_id)).state == "placed"  # type: ignore[union-attr]
    # Answered exactly as a cancel of a job nobody has: no tenant learns which ids are another's.
    other, unknown = (
        JobRejectedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.rejected")
    )
    assert other.tenant_id == unknown.tenant_id == "hanbit-ai" and other.code == unknown.code == "unknown_job"
    assert other.reason.replace(str(other.job_id), "X") == unknown.reason.replace(str(unknown.job_id), "X")
    assert not outbox(engine, "jobs.cancelled")


def test_unknown_tenant_policy_failure_and_slow_policy_never_place(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request_event("nobody"))

    class BrokenEngine:
        name = "broken"
        revision = "r"
        bundle = PolicyBundle({})

        def decide(
            self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None
        ) -> dict[str, Any]:
            raise PolicyEngineError("engine crashed")

    broken = placement_context()
    broken.policy = BrokenEngine()
    failed_on = request_event("hanbit-ai")
    with unit_of_work(engine) as session:
        placement.on_job_requested(broken, session, failed_on)

    clock = [0.0]

    class SlowEngine:
        name = "slow"
        revision = "r"
        bundle = PolicyBundle({})

        def decide(
            self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None
        ) -> dict[str, Any]:
            clock[0] += 0.05  # 50 ms pass on the decision's timer
            return {site_id: {"allowed": True} for site_id in policy_input["sites"]}

    slow = placement_context(policy_budget_ms=10, timer=lambda: clock[0])
    slow.policy = SlowEngine()
    waiting = request_event("hanbit-ai")
    with unit_of_work(engine) as session:
        placement.on_job_requested(slow, session, waiting)
    failed, over_budget = (row.payload for row in outbox(engine, "jobs.queued"))
    assert b"the policy engine failed (engine crashed)" in failed
    assert b"over its 10 ms budget" in over_budget
    [rejected] = [row.payload for row in outbox(engine, "jobs.rejected")]
    assert b'"unknown_tenant"' in rejected
    assert outbox(engine, "jobs.placed") == []
    with Session(engine) as session:
        assert session.exec(select(func.sum(PoolRow.reserved_gpus))).one() == 0
        assert {session.get(JobRow, str(e.data.job_id)).state for e in (failed_on, waiting)} == {"queued"}  # type: ignore[union-attr]
        assert session.exec(select(func.count()).select_from(DecisionRow)).one() == 0
    # The engine is back: the queue's pass decides both again and places them, each under a logged decision.
    with unit_of_work(engine) as session:
        assert placement.retry_queued(ctx, session) == 2
    placed = [JobPlacedEvent.model_validate_json(row.payload).data for row in outbox(engine, "jobs.placed")]
    assert {p.job_id for p in placed} == {failed_on.data.job_id, waiting.data.job_id}
    with Session(engine) as session:
        logged = {row.decision_id for row in session.exec(select(DecisionRow))}
    assert {str(p.explanation.decision_id) for p in placed} <= logged


def started_report(placed: JobPlaced, tenant_id: str, subject: str) -> JobStartedEvent:
    started = JobStarted.model_validate(
        {**placed.model_dump(include={"job_id", "site_id", "pool_id", "gpu_count"}), "tenant_id": tenant_id}
    )
    return TEST_KEYS.factory.sign(
        JobStartedEvent.create(source=f"factory/{placed.site_id}", subject=subject, data=started)
    )


def ended_report(placed: JobPlaced, tenant_id: str, subject: str) -> JobCompletedEvent:
    run = placed.model_dump(include={"site_id", "pool_id", "gpu_count", "attempt"})
    done = JobCompleted(
        job_id=placed.job_id, tenant_id=tenant_id, status="succeeded", usage_reports=0, gpu_seconds=0, **run
    )
    return TEST_KEYS.factory.sign(
        JobCompletedEvent.create(source=f"factory/{placed.site_id}", subject=subject, data=done)
    )


@pytest.mark.parametrize("report", [started_report, ended_report], ids=["started", "ended"])
@pytest.mark.parametrize(
    ("named", "subject"), [("mois", "mois"), ("mois", "hanbit-ai"), ("hanbit-ai", "mois")]
)
def test_a_run_report_naming_another_tenant_reaches_no_stream_and_changes_nothing(
    database_url: tuple[str, str], report: Any, named: str, subject: str
) -> None:
    """The site's own key, the job's own run, but another tenant named (in the report, its envelope or
    both): it is refused whole, and the job's tenant alone hears of the genuine report."""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request_event("hanbit-ai"))
    [placed] = placements(engine)
    handler = placement.on_job_started if report is started_report else placement.on_job_completed
    before = len(outbox(engine))
    with pytest.raises(PoisonMessage), unit_of_work(engine) as session:
        handler(ctx, session, report(placed, named, subject))
    assert len(outbox(engine)) == before
    with Session(engine) as session:
        job = session.get(JobRow, str(placed.job_id))
        assert job is not None and job.state == "placed"
        assert session.get(PoolRow, placed.pool_id).reserved_gpus == placed.gpu_count  # type: ignore[union-attr]
    with unit_of_work(engine) as session:
        handler(ctx, session, report(placed, "hanbit-ai", "hanbit-ai"))
    [relayed] = outbox(engine)[before:]
    assert (relayed.topic, relayed.also_to, relayed.key) == (
        tenant_stream("hanbit-ai"),
        None,
        str(placed.job_id),
    )


def test_the_market_the_tests_and_the_bench_assume_is_the_one_placement_builds_from_the_offers(
    database_url: tuple[str, str],
) -> None:
    """offered_pools (the catalogue as the tests and the benchmark decide over it) equals placement's own
    pools after the catalogue's offers, field by field."""
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    with Session(engine) as session:
        built = sorted(load_pools(session), key=lambda p: p.pool_id)
    assumed = sorted(offered_pools(CATALOGUE.offers), key=lambda p: p.pool_id)
    assert assumed == built and len(built) == sum(len(offer.pools) for offer in CATALOGUE.offers)
    assert any(p.price_krw_per_million_output_tokens is not None for p in built)
    assert {p.status for p in built} == {"available"} and {p.reserved_gpus for p in built} == {0}


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_a_placed_job_records_its_decision_and_only_inference_is_priced_per_token(
    database_url: tuple[str, str], kind: str
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    with unit_of_work(engine) as session:
        # Korea's only H100s (a ministry's jobs stay in Korea) are priced per token too.
        placement.on_job_requested(ctx, session, request_event("mois", kind=kind, accelerator_model="H100"))
    [placed] = placements(engine)
    pool = next(p for o in CATALOGUE.offers for p in o.pools if p.pool_id == placed.pool_id)
    assert placed.pool_id == "skt-pangyo-h100" and pool.price_krw_per_million_output_tokens is not None
    tokens = (placed.price_krw_per_million_input_tokens, placed.price_krw_per_million_output_tokens)
    if kind == "inference":
        assert tokens == (pool.price_krw_per_million_input_tokens, pool.price_krw_per_million_output_tokens)
    else:
        assert tokens == (None, None)
    with Session(engine) as session:
        job = session.get(JobRow, str(placed.job_id))
        assert job is not None
        assert (job.decision_id, job.policy_revision, job.reason) == (
            str(placed.explanation.decision_id),
            placed.explanation.policy_revision,
            placed.explanation.summary,
        )
        estimate = placed.gpu_count * placed.expected_hours * placed.price_krw_per_gpu_hour
        assert job.estimate_krw == estimate == committed_krw(session, "mois", None)


@pytest.mark.parametrize(
    ("after", "code", "words"),
    [
        (timedelta(minutes=45), "deadline_unreachable", "too little time is left after waiting for capacity"),
        (timedelta(hours=1), "deadline_passed", "passed while it waited for capacity"),
    ],
    ids=["too-little-left", "at-the-deadline"],
)
def test_the_sweep_rejects_a_queued_job_that_can_no_longer_end_in_time(
    database_url: tuple[str, str], after: timedelta, code: str, words: str
) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    deadline = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    blocker = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=640)
    waiting = request_event(
        "mois",
        csap_grade="high",
        accelerator_model="A100",
        gpu_count=8,
        expected_hours=0.5,
        deadline=deadline,
    )
    for event in (blocker, waiting):
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    later = placement_context(clock=lambda: deadline - timedelta(hours=1) + after)
    with unit_of_work(engine) as session:
        assert placement.sweep_queue(later, session) == 1
    [row] = outbox(engine, "jobs.rejected")
    rejected = JobRejectedEvent.model_validate_json(row.payload).data
    assert (rejected.job_id, rejected.code, rejected.scope) == (waiting.data.job_id, code, "job")
    assert words in rejected.reason
    with Session(engine) as session:
        job = session.get(JobRow, str(waiting.data.job_id))
        assert job is not None and (job.state, job.reason) == ("rejected", rejected.reason)
