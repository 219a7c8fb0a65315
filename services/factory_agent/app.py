"""The factory agent's wiring: its consumer, and the loop that hands placed runs to the site's backend
(backends.py: the simulation by default, or a Slurm cluster) and reports what the backend says of them."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from sqlalchemy import Engine

from contracts.events import (
    CapacityOfferedEvent,
    CapacityUpdatedEvent,
    JobCancelledEvent,
    JobCompletedEvent,
    JobKind,
    JobPlacedEvent,
    JobStartedEvent,
    UsageReportedEvent,
)
from services.factory_agent import handlers
from services.factory_agent.backends import (
    BackendKind,
    BackendUnavailable,
    FactoryBackend,
    RunRefused,
    RunReport,
    SimulatedBackend,
    SlurmBackend,
)
from services.factory_agent.slurm import SlurmCluster
from services.factory_agent.storage import TABLES
from services.shared.db import unit_of_work, utc_now
from services.shared.domain.attestation import load_attestations
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import Signer
from services.shared.logging import get_logger
from services.shared.runtime import Service, consume, document_publishers, new_service
from services.shared.settings import Settings

NAME = "factory-agent"
log = get_logger(component="factory-agent")
TICK_SECONDS = 0.1
# A pass hands runs to the backend for at most this long, then reports on those already handed over: Slurm
# takes about half a second a run (squeue, sacct, sacctmgr, sbatch), and the 22 runs of one burst in the
# demo held back every start report and cancel for 13 s.
SUBMIT_SECONDS_PER_PASS = 1.0
# How often the backend is asked what each pool can take (the simulation never changes).
CAPACITY_SECONDS = 5.0


def build(settings: Settings) -> Service:
    catalogue = load_catalogue(settings.catalogue_dir)
    service = new_service(NAME, settings, TABLES, catalogue.tenants)
    wanted = set(settings.factory_sites)
    # An agent for named sites is its factory's own: it reads every placement, to take those at its sites.
    service.party = "+".join(sorted(wanted))
    unknown = (wanted | set(settings.site_failure_rates)) - set(catalogue.site_ids)
    if unknown:
        raise ValueError(f"unknown sites for the factory agent: {', '.join(sorted(unknown))}")
    attestations = load_attestations(settings.site_attestations_path)
    context = handlers.FactoryContext(
        offers={
            o.site.site_id: o.model_copy(update={"attestation": attestations.get(o.site.site_id)})
            for o in catalogue.offers
            if not wanted or o.site.site_id in wanted
        },
        signer=Signer.load(settings.signing_key_path, settings.signing_key_id)
        if settings.signing_key_path
        else None,
    )
    backend = build_backend(settings, context)
    consume(
        service,
        {
            JobPlacedEvent: partial(handlers.on_job_placed, context),
            JobCancelledEvent: partial(handlers.on_job_cancelled, context),
        },
    )
    document_publishers(
        service.broker,
        [CapacityOfferedEvent, CapacityUpdatedEvent, JobStartedEvent, UsageReportedEvent, JobCompletedEvent],
        NAME,
    )

    async def drive_runs() -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if await drive_runs_once(service.engine, backend, context):
                service.relay.wake()

    async def follow_capacity() -> None:
        """Offer each site at what its backend can take, then offer a pool whose usable GPUs change (a node
        drained, down or back) at its new size."""
        with unit_of_work(service.engine) as session:
            offered = handlers.offer_capacity(context, session, await usable_gpus(backend) or {})
        service.relay.wake()
        while True:
            await asyncio.sleep(CAPACITY_SECONDS)
            usable = await usable_gpus(backend)
            changed = {pool: gpus for pool, gpus in (usable or {}).items() if offered.get(pool) != gpus}
            if changed:
                with unit_of_work(service.engine) as session:
                    handlers.update_capacity(context, session, changed)
                offered.update(changed)
                service.relay.wake()

    service.background += [drive_runs, follow_capacity]
    return service


async def usable_gpus(backend: FactoryBackend) -> dict[str, int] | None:
    """What each pool can take now, or None if the backend does not say (or cannot be asked just now)."""
    try:
        return await backend.capacity()
    except BackendUnavailable as error:
        log.error("capacity_not_known", error=str(error)[:500])
        return None


async def drive_runs_once(
    engine: Engine,
    backend: FactoryBackend,
    context: handlers.FactoryContext,
    submit_seconds: float = SUBMIT_SECONDS_PER_PASS,
) -> int:
    """One pass over the runs not yet ended, oldest first: hand new ones to the backend (for at most
    `submit_seconds`, then the rest wait for the next pass), pass cancels on, and report what the backend
    says of each handed run. Returns how many events it emitted."""
    with unit_of_work(engine) as session:
        runs = handlers.active_runs(session, context.offers)
    reports: dict[str, RunReport] = {}
    began, handed_over = time.monotonic(), 0
    for run in runs:
        if run.cancel_requested and not run.submitted:
            reports[run.run_id] = RunReport(started=False, status="cancelled")  # it never ran
            continue
        if not run.submitted:
            if handed_over and time.monotonic() - began > submit_seconds:
                continue
            handed_over += 1
            try:
                backend_ref = await backend.submit(run)
            except RunRefused as refusal:
                reports[run.run_id] = RunReport(started=False, status="failed", reason=str(refusal))
                continue
            except BackendUnavailable as error:  # this run waits for a later pass; the others go on
                log.error("run_not_handed_over", run_id=run.run_id, error=str(error)[:500])
                continue
            with unit_of_work(engine) as session:
                handlers.mark_submitted(session, run.run_id, backend_ref)
            run.submitted, run.backend_ref = True, backend_ref
        if run.cancel_requested and not run.cancel_sent:
            try:
                await backend.cancel(run)
            except BackendUnavailable as error:  # asked again at the next pass
                log.error("run_not_cancelled", run_id=run.run_id, error=str(error)[:500])
                continue
            with unit_of_work(engine) as session:
                handlers.mark_cancel_sent(session, run.run_id)
    handed = [run for run in runs if run.submitted and run.run_id not in reports]
    try:
        reports.update(await backend.report(handed, utc_now()))
    except BackendUnavailable as error:  # what was decided above is reported; the rest at a later pass
        log.error("runs_not_reported", error=str(error)[:500])
    emitted = 0
    for run_id, report in reports.items():
        with unit_of_work(engine) as session:
            emitted += handlers.advance_run(context, session, run_id, report)
    return emitted


def build_backend(settings: Settings, context: handlers.FactoryContext) -> FactoryBackend:
    if settings.factory_backend not in set(BackendKind):
        raise ValueError(
            f"SOVEREIGN_FACTORY_BACKEND is {settings.factory_backend!r}: use one of {', '.join(BackendKind)}"
        )
    kind = BackendKind(settings.factory_backend)
    if kind is BackendKind.SIMULATION:
        return SimulatedBackend(settings.time_scale, settings.site_failure_rates)
    pools = {pool.pool_id for offer in context.offers.values() for pool in offer.pools}
    unmapped = pools - set(settings.slurm_partitions)
    if unmapped:
        raise ValueError(
            f"SOVEREIGN_SLURM_PARTITIONS has no partition for pools {', '.join(sorted(unmapped))}"
        )
    # Slurm accounts GPU time, not tokens: a pool priced per token would be billed nothing for inference.
    per_token = sorted(
        pool.pool_id
        for offer in context.offers.values()
        for pool in offer.pools
        if pool.price_krw_per_million_input_tokens is not None
    )
    if per_token:
        raise ValueError(
            f"pools {', '.join(per_token)} are priced per token, and the Slurm backend reports no token "
            "counts: serve them with another backend, or price them per GPU-hour"
        )
    unscripted = {kind.value for kind in JobKind} - set(settings.slurm_launch_scripts)
    if unscripted:
        raise ValueError(f"SOVEREIGN_SLURM_LAUNCH_SCRIPTS has no script for {', '.join(sorted(unscripted))}")
    return SlurmBackend(
        SlurmCluster({}),
        settings.slurm_partitions,
        settings.slurm_launch_scripts,
        settings.time_scale,
        settings.slurm_usage_interval_seconds,
    )
