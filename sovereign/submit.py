"""`sovereign submit JOB.json`: produce one job request and follow it until it is rejected or billed."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

from pydantic import ValidationError

from contracts import tenant_stream
from contracts.events import (
    JobBilledEvent,
    JobCancelEvent,
    JobCancelledEvent,
    JobCancelRequested,
    JobCompletedEvent,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejectedEvent,
    JobRequest,
    JobRequestedEvent,
    JobStartedEvent,
    UsageRatedEvent,
)
from services.shared.domain.signing import Signer
from services.shared.kafka import transport_security
from services.shared.settings import Settings
from sovereign.explain import render_explanation
from sovereign.verification.watch import EventWatcher, UnknownTopicError, produce


def read_request(path: Path) -> JobRequest:
    raw = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    return JobRequest.model_validate_json(raw)


async def submit(path: Path, settings: Settings, wait_seconds: float) -> int:
    try:
        request = read_request(path)
    except (OSError, ValidationError) as error:
        print(f"error: {path} is not a valid job request:\n{error}", file=sys.stderr)
        return 2
    job_id = request.job_id
    event = JobRequestedEvent.create(
        source=f"tenant/{request.tenant_id}", subject=request.tenant_id, data=request
    )
    signer = tenant_signer(settings)
    if signer is not None:
        event = signer.sign(event)
    security = transport_security(settings)
    # The tenant's own stream: all a tenant may read, and everything about its jobs.
    stream = tenant_stream(request.tenant_id)
    try:
        watching = EventWatcher(
            settings.bootstrap_servers,
            [stream],
            security=security,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        async with watching as watcher:
            await produce(
                settings.bootstrap_servers, [(event, str(job_id))], settings.idempotent_producer, security
            )
            print(f"submitted job {job_id} ({request.name}) for tenant {request.tenant_id}")
            return await _follow(watcher, job_id, wait_seconds)
    except UnknownTopicError:
        print(f"error: no stream {stream}: is {request.tenant_id!r} in the tenant registry?", file=sys.stderr)
        return 2


async def _follow(watcher: EventWatcher, job_id: uuid.UUID, wait_seconds: float) -> int:
    """Print what happens to the job until it is billed (0), rejected or cancelled before it ran (1), or the
    wait is over (3)."""
    deadline = time.monotonic() + wait_seconds
    async for batch in watcher.events():
        for seen in batch:
            data = seen.data
            if getattr(data, "job_id", None) != job_id:
                continue
            if isinstance(seen, JobPlacedEvent):
                print(f"placed on {seen.data.site_id}:\n{render_explanation(seen.data.explanation)}")
            elif isinstance(seen, JobQueuedEvent):
                print(f"queued: {seen.data.reason}\n{render_explanation(seen.data.explanation)}")
            elif isinstance(seen, JobRejectedEvent):
                print(f"rejected ({seen.data.code.value}): {seen.data.reason}")
                if seen.data.explanation:
                    print(render_explanation(seen.data.explanation))
                return 1
            elif isinstance(seen, JobCancelledEvent):
                print(f"cancelled ({seen.data.stage}){': ' + seen.data.reason if seen.data.reason else ''}")
                if seen.data.stage != "placed":  # a placed job is still billed for what it ran
                    return 1
            elif isinstance(seen, JobStartedEvent):
                print(f"started at {seen.data.site_id} on {seen.data.gpu_count} GPUs")
            elif isinstance(seen, UsageRatedEvent):
                print(
                    f"usage #{seen.data.seq}: {seen.data.gpu_seconds:,} GPU-s = {seen.data.amount_krw:,} KRW"
                )
            elif isinstance(seen, JobCompletedEvent):
                print(f"completed ({seen.data.status}) after {seen.data.usage_reports} usage reports")
            elif isinstance(seen, JobBilledEvent):
                print(
                    f"billed {seen.data.amount_krw:,} KRW for {seen.data.gpu_seconds:,} GPU-seconds at "
                    f"{seen.data.price_krw_per_gpu_hour:,} KRW/GPU-h"
                )
                return 0
        if time.monotonic() > deadline:
            print(f"no final outcome within {wait_seconds:.0f}s", file=sys.stderr)
            return 3
        await asyncio.sleep(0)
    return 3


def cancel_event(tenant_id: str, job_id: uuid.UUID, reason: str, signer: Signer | None) -> JobCancelEvent:
    """A tenant's cancel, as the tenant sends it: signed with its key (placement refuses it unsigned)."""
    data = JobCancelRequested(job_id=job_id, tenant_id=tenant_id, reason=reason)
    event = JobCancelEvent.create(source=f"tenant/{tenant_id}", subject=tenant_id, data=data)
    return signer.sign(event) if signer else event


def tenant_signer(settings: Settings) -> Signer | None:
    """The tenant's key (SOVEREIGN_SIGNING_KEY and SOVEREIGN_SIGNING_KEY_ID), if configured."""
    if settings.signing_key_path is None:
        print("warning: no SOVEREIGN_SIGNING_KEY: the marketplace will refuse this unsigned", file=sys.stderr)
        return None
    return Signer.load(settings.signing_key_path, settings.signing_key_id)


async def cancel(settings: Settings, tenant_id: str, job_id: uuid.UUID, reason: str) -> int:
    """Produce a tenant's cancel; placement honours it at any stage and answers with jobs.cancelled."""
    event = cancel_event(tenant_id, job_id, reason, tenant_signer(settings))
    await produce(
        settings.bootstrap_servers,
        [(event, str(job_id))],
        settings.idempotent_producer,
        transport_security(settings),
    )
    print(f"asked to cancel job {job_id} for tenant {tenant_id}")
    return 0
