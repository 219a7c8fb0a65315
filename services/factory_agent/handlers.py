"""The factory agent's transaction scripts, the same whatever runs the jobs (backends.py): a placed run is
recorded here and handed to the backend by the agent's loop, which brings each report back through
advance_run: jobs.started once, each usage interval once, jobs.completed at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlmodel import Session, col, select

from contracts import AnyEvent
from contracts.events import (
    CapacityOffered,
    CapacityOfferedEvent,
    CapacityUpdated,
    CapacityUpdatedEvent,
    JobCancelledEvent,
    JobCompleted,
    JobCompletedEvent,
    JobPlacedEvent,
    JobStarted,
    JobStartedEvent,
    UsageReported,
    UsageReportedEvent,
)
from contracts.limits import MAX_REASON_LENGTH
from services.factory_agent.backends import RunReport
from services.factory_agent.simulation import UsageInterval, usage_event_id
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
# The state a run ends in, by how its backend says it ended.
RUN_STATE_AT_END = {
    "succeeded": RunState.COMPLETED,
    "failed": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
}


@dataclass(frozen=True)
class FactoryContext:
    offers: dict[str, CapacityOffered]
    # The factory's key: placement and billing refuse its offers, runs' starts and ends and usage unsigned.
    signer: Signer | None = None

    def source(self, site_id: str) -> str:
        return f"factory/{site_id}"

    def emit(self, session: Session, event: AnyEvent, key: str) -> None:
        """Into the outbox, signed by the factory's key."""
        add_to_outbox(session, self.signer.sign(event) if self.signer else event, key)


def offer_capacity(ctx: FactoryContext, session: Session, usable: Mapping[str, int]) -> dict[str, int]:
    """Each site's offer, a pool at the GPUs the backend says it can take now (the catalogue's size when
    the backend does not say, or says none: an offer has at least one). Returns each pool's offered size.

    Sized here rather than corrected by a capacity.updated after: that event may reach placement before
    the offer it corrects (another topic), and is then dropped as for an unknown pool."""
    if ctx.signer is None:
        get_logger(component="factory-agent").warning(
            "factory_unsigned", reason="no SOVEREIGN_SIGNING_KEY: placement and billing refuse its events"
        )
    offered: dict[str, int] = {}
    for site_id, offer in sorted(ctx.offers.items()):
        pools = [
            pool.model_copy(update={"gpu_count": usable.get(pool.pool_id) or pool.gpu_count})
            for pool in offer.pools
        ]
        offered |= {pool.pool_id: pool.gpu_count for pool in pools}
        data = offer.model_copy(update={"pools": pools})
        ctx.emit(
            session,
            CapacityOfferedEvent.create(source=ctx.source(site_id), subject=site_id, data=data),
            site_id,
        )
    return offered


def update_capacity(ctx: FactoryContext, session: Session, usable: dict[str, int]) -> None:
    """capacity.updated for each pool whose usable GPUs changed: none usable is maintenance."""
    site_of = {pool.pool_id: site_id for site_id, offer in ctx.offers.items() for pool in offer.pools}
    for pool_id, gpus in sorted(usable.items()):
        site_id = site_of[pool_id]
        status: Literal["available", "maintenance"] = "available" if gpus else "maintenance"
        update = CapacityUpdated(site_id=site_id, pool_id=pool_id, status=status, gpu_count=gpus)
        ctx.emit(
            session,
            CapacityUpdatedEvent.create(source=ctx.source(site_id), subject=site_id, data=update),
            site_id,
        )
        get_logger(site_id=site_id, pool_id=pool_id).info("capacity_updated", gpus=gpus, status=status)


def on_job_placed(ctx: FactoryContext, session: Session, event: JobPlacedEvent) -> None:
    placed = event.data
    offer = ctx.offers.get(placed.site_id)
    # Another agent's site: left unclaimed, for that agent even if it shares this database.
    if offer is None or not claim_event(session, CONSUMER, event):
        return
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
            priority=placed.priority,
            deadline=placed.deadline,
        )
    )
    get_logger(job_id=str(placed.job_id), site_id=placed.site_id).info("run_accepted", attempt=placed.attempt)


def on_job_cancelled(ctx: FactoryContext, session: Session, event: JobCancelledEvent) -> None:
    """Stop a cancelled run after its last reported interval; usage until then stands and is billed."""
    cancelled = event.data
    if cancelled.stage != "placed" or cancelled.site_id not in ctx.offers:
        return
    if not claim_event(session, CONSUMER, event):
        return
    job_id = str(cancelled.job_id)
    run = running_run(session, job_id)
    if run is None:
        # Before its placement arrives; a second notice for the job (the fuzz tests sent one) changes nothing.
        insert_ignoring_duplicates(session, table_of(CancelledJob), {"job_id": job_id})
        return
    # The agent's loop passes it on; the backend's report then ends the run, with the usage until then.
    run.cancel_requested = True


def active_runs(session: Session, site_ids: Iterable[str]) -> list[RunRow]:
    """The runs not yet ended at these sites, oldest first, detached from the session (the loop awaits the
    backend with them). Another agent's runs are not this one's to drive, should the two share a database."""
    runs = list(
        session.exec(
            select(RunRow)
            .where(RunRow.state == RunState.RUNNING, col(RunRow.site_id).in_(list(site_ids)))
            .order_by(col(RunRow.started_at), col(RunRow.run_id))
        )
    )
    session.expunge_all()
    return runs


def mark_submitted(session: Session, run_id: str, backend_ref: str | None) -> None:
    run = session.get(RunRow, run_id)
    if run is not None:
        run.submitted, run.backend_ref = True, backend_ref


def mark_cancel_sent(session: Session, run_id: str) -> None:
    run = session.get(RunRow, run_id)
    if run is not None:
        run.cancel_sent = True


def advance_run(ctx: FactoryContext, session: Session, run_id: str, report: RunReport) -> int:
    """Report what the backend says of a run that was not reported yet: its start, each usage interval,
    and its end. Each interval is claimed first, so two agents (or a restarted one) report it once.
    Returns how many events were emitted."""
    run = session.get(RunRow, run_id)
    if run is None or run.state != RunState.RUNNING:
        return 0
    job_uuid = uuid.UUID(run.job_id)
    source = ctx.source(run.site_id)
    emitted = 0
    if report.started and not run.started_reported:
        run.started_reported = True
        started = JobStarted(
            job_id=job_uuid,
            tenant_id=run.tenant_id,
            site_id=run.site_id,
            pool_id=run.pool_id,
            gpu_count=run.gpu_count,
            attempt=run.attempt,
        )
        ctx.emit(
            session, JobStartedEvent.create(source=source, subject=run.tenant_id, data=started), run.job_id
        )
        get_logger(job_id=run.job_id, site_id=run.site_id).info("job_started", attempt=run.attempt)
        emitted += 1
    began = report.began or as_utc(run.started_at)
    for interval in report.intervals[run.next_seq - 1 :]:
        if not claim_interval(session, run_id, interval.seq):
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
            interval_start=began + timedelta(seconds=interval.start_offset_s),
            interval_end=began + timedelta(seconds=interval.end_offset_s),
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
    if report.status is not None and finish_run(session, run_id, RUN_STATE_AT_END[report.status]):
        _report_completion(
            ctx,
            session,
            job_uuid,
            run.attempt,
            run.tenant_id,
            run.site_id,
            run.pool_id,
            run.gpu_count,
            report.status,
            list(report.intervals),
            report.reason,
        )
        emitted += 1
    return emitted


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
    reason: str | None = None,
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
        reason=reason[:MAX_REASON_LENGTH] if reason else None,
    )
    event = JobCompletedEvent.create(source=ctx.source(site_id), subject=tenant_id, data=completed)
    ctx.emit(session, event, str(job_id))
    get_logger(job_id=str(job_id), site_id=site_id).info(
        "job_completed", status=status, attempt=attempt, usage_reports=len(reported)
    )
