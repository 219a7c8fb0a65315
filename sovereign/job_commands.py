"""`sovereign submit | cancel | jobs`: a tenant's request and cancel, followed to their answer, and jobs by
state from placement's database (queued jobs with their place and reason)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from contracts import job_id_for
from services.placement.logic import JobState
from services.placement.storage import TABLES, jobs_in, queued_jobs
from services.shared.db import as_utc, utc_now
from services.shared.settings import Settings
from sovereign.options import Commands, connection_options, settings_of
from sovereign.submit import cancel, submit
from sovereign.verification.databases import service_session

QUEUE_LIMIT = 100_000


def register(commands: Commands) -> None:
    submitting = commands.add_parser(
        "submit", help="submit a job request (JSON) and follow it to its outcome"
    )
    submitting.add_argument("job", help="path to a JSON job request; '-' reads standard input")
    submitting.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the outcome")
    connection_options(submitting)
    submitting.set_defaults(handler=_submit)

    cancelling = commands.add_parser("cancel", help="cancel a job at whatever stage it is")
    cancelling.add_argument("--tenant", required=True)
    target = cancelling.add_mutually_exclusive_group(required=True)
    target.add_argument("--job-id")
    target.add_argument("--client-request-id")
    cancelling.add_argument("--reason", default="")
    connection_options(cancelling)
    cancelling.set_defaults(handler=_cancel)

    jobs = commands.add_parser("jobs", help="jobs by state; queued jobs with their position and reason")
    jobs.add_argument("--state", choices=[state.value for state in JobState])
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    connection_options(jobs)
    jobs.set_defaults(handler=_jobs)


def _submit(args: argparse.Namespace) -> int:
    return asyncio.run(submit(Path(args.job), settings_of(args), args.timeout))


def _cancel(args: argparse.Namespace) -> int:
    job_id = uuid.UUID(args.job_id) if args.job_id else job_id_for(args.tenant, args.client_request_id)
    return asyncio.run(cancel(settings_of(args), args.tenant, job_id, args.reason))


def _jobs(args: argparse.Namespace) -> int:
    return list_jobs(settings_of(args), args.state, args.tenant)


def list_jobs(settings: Settings, state: str | None, tenant_id: str | None) -> int:
    with service_session(settings, "placement", TABLES) as session:
        jobs = jobs_in(session, state, tenant_id)
        # Positions are in the whole queue (a tenant sees where it stands, not whom it waits behind).
        position = {job.job_id: index for index, job in enumerate(queued_jobs(session, QUEUE_LIMIT), start=1)}
    jobs.sort(key=lambda job: (job.state, position.get(job.job_id, 0)))  # queued jobs in queue order
    now = utc_now()
    current = None
    for job in jobs:
        if job.state != current:
            current = job.state
            print(f"\n{current}")
        priority = job.request.get("priority", "normal")
        head = f"  {job.job_id}  {job.tenant_id:<20} {job.gpu_count:>6} GPUs  {priority:<7}"
        if job.failed_sites:
            head += f" run {job.attempt} (failed before at {', '.join(job.failed_sites)})"
        if job.state == JobState.QUEUED:
            waited = (now - as_utc(job.requested_at)).total_seconds()
            print(f"{head} #{position.get(job.job_id, '?')} in queue, waiting {waited:,.0f}s: {job.reason}")
        elif job.site_id:
            print(f"{head} {job.site_id} ({job.pool_id}) at {job.price_krw_per_gpu_hour:,} KRW/GPU-h")
        else:
            print(f"{head} {job.reason}")
    print(f"\n{len(jobs)} jobs")
    return 0
