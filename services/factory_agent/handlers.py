"""The factory agent's transaction scripts. It simulates an AI factory's own scheduler: a real adapter
(Slurm, Kubernetes/Kueue) would take jobs.placed the same way and report real usage instead."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlmodel import Session, col, select

from contracts import AnyEvent
from contracts.events import (
    CapacityOffered,
    CapacityOfferedEvent,
    JobCancelledEvent,
    JobCompleted,
    JobCompletedEvent,
    JobKind,
    JobPlacedEvent,
    JobStarted,
    JobStartedEvent,
    UsageReported,
    UsageReportedEvent,
)
from services.factory_agent.simulation import UsageInterval, failure_point, usage_event_id, usage_intervals
from services.factory_agent.storage import (
    CancelledJob,
    RunRow,
    RunState,
    claim_interval,
    finish_run,
    run_key,
    running_run,
)
from services.shared.db import as_utc, insert_ignoring_duplicates, table_of
from services.shared.domain.signing import Signer
from services.shared.inbox import claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox

CONSUMER = "factory-agent"


@dataclass(frozen=True)
class FactoryContext:
    offers: dict[str, CapacityOffered]
    time_scale: float
    # Share of runs that fail at each site (simulated hardware faults); absent sites never fail.
    failure_rates: dict[str, float] = field(default_factory=dict)
    # The factory's key: placement and billing refuse its offers, runs' starts and ends and usage unsigned.
    signer: Signer | None = None

    def source(self, site_id: str) -> str:
        return f"factory/{site_id}"

    def emit(self, session: Session, event: AnyEvent, key: str) -> None:
        """Into the outbox, signed by the factory's key."""
        add_to_outbox(session, self.signer.sign(event) if self.signer else event, key)


def offer_capacity(ctx: FactoryContext, session: Session) -> None:
    if ctx.signer is None:
        get_logger(component="factory-agent").warning(
            "factory_unsigned", reason="no SOVEREIGN_SIGNING_KEY: placement and billing refuse its events"
        )
    for site_id, offer in sorted(ctx.offers.items()):
        ctx.emit(
            session,
            CapacityOfferedEvent.create(source=ctx.source(site_id), subject=site_id, data=offer),
            site_id,
        )


def on_job_placed(ctx: FactoryContext, session: Session, event: JobPlacedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    placed = event.data
    offer = ctx.offers.get(placed.site_id)
    if offer is None:
        return  # another agent simulates that site
    if session.get(CancelledJob, str(placed.job_id)) is not None:
        # Cancelled before it reached us: it never starts, and placement gets its capacity back.
        _report_completion(
            ctx,
            session,
            placed.job_id,
            placed.attempt,
            placed.tenant_id,
            placed.site_id,
            placed.pool_id,
            placed.gpu_count,
            "cancelled",
            [],
        )
        return
    pool = next((p for p in offer.pools if p.pool_id == placed.pool_id), None)
    if pool is None:
        raise ValueError(f"placed on pool {placed.pool_id!r}, which site {placed.site_id!r} does not offer")
    run_id = run_key(str(placed.job_id), placed.attempt)
    if session.get(RunRow, run_id) is not None:
        return
    session.add(
        RunRow(
            run_id=run_id,
            job_id=str(placed.job_id),
            attempt=placed.attempt,
            tenant_id=placed.tenant_id,
            site_id=placed.site_id,
            pool_id=placed.pool_id,
            kind=placed.kind.value,
            gpu_count=placed.gpu_count,
            expected_hours=placed.expected_hours,
            power_kw_per_gpu=pool.power_kw_per_gpu,
            pue=pool.pue,
        )
    )
    started = JobStarted(
        job_id=placed.job_id,
        tenant_id=placed.tenant_id,
        site_id=placed.site_id,
        pool_id=placed.pool_id,
        gpu_count=placed.gpu_count,
        attempt=placed.attempt,
    )
    ctx.emit(
        session,
        JobStartedEvent.create(source=ctx.source(placed.site_id), subject=placed.tenant_id, data=started),
        str(placed.job_id),
    )
    get_logger(job_id=str(placed.job_id), site_id=placed.site_id).info("job_started", attempt=placed.attempt)


def on_job_cancelled(ctx: FactoryContext, session: Session, event: JobCancelledEvent) -> None:
    """Stop a cancelled run after its last reported interval; usage until then stands and is billed."""
    if not claim_event(session, CONSUMER, event):
        return
    cancelled = event.data
    if cancelled.stage != "placed" or cancelled.site_id not in ctx.offers:
        return
    job_id = str(cancelled.job_id)
    run = running_run(session, job_id)
    if run is None:
        # Before its placement arrives; a second notice for the job (the fuzz tests sent one) changes nothing.
        insert_ignoring_duplicates(session, table_of(CancelledJob), {"job_id": job_id})
        return
    if not finish_run(session, run.run_id, RunState.CANCELLED):
        return  # it had already finished
    reported = _intervals(run)[: run.next_seq - 1]
    _report_completion(
        ctx,
        session,
        cancelled.job_id,
        run.attempt,
        run.tenant_id,
        run.site_id,
        run.pool_id,
        run.gpu_count,
        "cancelled",
        reported,
    )


def running_run_ids(session: Session) -> list[str]:
    return list(
        session.exec(
            select(RunRow.run_id).where(RunRow.state == RunState.RUNNING).order_by(col(RunRow.run_id))
        )
    )


def advance_run(ctx: FactoryContext, session: Session, run_id: str, now: datetime) -> int:
    """Report every interval of the run that simulated time has reached; complete the run after the last,
    or fail it where the simulated fault strikes."""
    run = session.get(RunRow, run_id)
    if run is None or run.state != RunState.RUNNING:
        return 0
    job_uuid = uuid.UUID(run.job_id)
    started = as_utc(run.started_at)
    simulated_elapsed = (now - started).total_seconds() * ctx.time_scale
    intervals = _intervals(run)
    fails_after = failure_point(
        job_uuid, run.attempt, ctx.failure_rates.get(run.site_id, 0.0), len(intervals)
    )
    reportable = intervals if fails_after is None else intervals[:fails_after]
    emitted = 0
    source = ctx.source(run.site_id)
    for interval in reportable[run.next_seq - 1 :]:
        if interval.end_offset_s > simulated_elapsed or not claim_interval(session, run_id, interval.seq):
            break
        usage = UsageReported(
            job_id=job_uuid,
            tenant_id=run.tenant_id,
            site_id=run.site_id,
            pool_id=run.pool_id,
            attempt=run.attempt,
            seq=interval.seq,
            gpu_seconds=interval.gpu_seconds,
            energy_wh=interval.energy_wh,
            input_tokens=interval.input_tokens,
            output_tokens=interval.output_tokens,
            # Simulated clock: the run's start plus simulated seconds.
            interval_start=started + timedelta(seconds=interval.start_offset_s),
            interval_end=started + timedelta(seconds=interval.end_offset_s),
        )
        ctx.emit(
            session,
            UsageReportedEvent.create(
                source=source,
                subject=run.tenant_id,
                data=usage,
                event_id=usage_event_id(job_uuid, run.attempt, interval.seq),
            ),
            run.job_id,
        )
        emitted += 1
    # A run ends when its last interval does; a failing one when the interval it fails in would have.
    ends_at = intervals[-1 if fails_after is None else fails_after].end_offset_s
    status: Literal["succeeded", "failed"] = "succeeded" if fails_after is None else "failed"
    state = RunState.COMPLETED if fails_after is None else RunState.FAILED
    if ends_at <= simulated_elapsed and finish_run(session, run_id, state):
        _report_completion(
            ctx,
            session,
            job_uuid,
            run.attempt,
            run.tenant_id,
            run.site_id,
            run.pool_id,
            run.gpu_count,
            status,
            reportable,
        )
        emitted += 1
    return emitted


def _intervals(run: RunRow) -> list[UsageInterval]:
    return usage_intervals(
        uuid.UUID(run.job_id),
        JobKind(run.kind),
        run.gpu_count,
        run.expected_hours,
        run.power_kw_per_gpu,
        run.pue,
    )


def _report_completion(
    ctx: FactoryContext,
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    tenant_id: str,
    site_id: str,
    pool_id: str,
    gpu_count: int,
    status: Literal["succeeded", "failed", "cancelled"],
    reported: list[UsageInterval],
) -> None:
    """jobs.completed, with how many usage intervals were reported, so billing knows when it has them all."""
    completed = JobCompleted(
        job_id=job_id,
        tenant_id=tenant_id,
        site_id=site_id,
        pool_id=pool_id,
        gpu_count=gpu_count,
        status=status,
        usage_reports=len(reported),
        gpu_seconds=sum(i.gpu_seconds for i in reported),
        attempt=attempt,
    )
    event = JobCompletedEvent.create(source=ctx.source(site_id), subject=tenant_id, data=completed)
    ctx.emit(session, event, str(job_id))
    get_logger(job_id=str(job_id), site_id=site_id).info(
        "job_completed", status=status, attempt=attempt, usage_reports=len(reported)
    )
