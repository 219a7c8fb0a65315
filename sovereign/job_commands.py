"""`sovereign jobs`: jobs by state from placement's database; queued jobs with their place and reason."""

from __future__ import annotations

from services.placement.logic import JobState
from services.placement.storage import TABLES, jobs_in, queued_jobs
from services.shared.db import as_utc, utc_now
from services.shared.settings import Settings
from sovereign.databases import service_session

QUEUE_LIMIT = 100_000


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
