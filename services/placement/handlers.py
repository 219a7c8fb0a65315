"""Placement's transaction scripts: each takes a session and one event, loads, decides, writes effect
and outbox.

No Kafka here and no awaits: the caller commits the transaction and wakes the outbox relay.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import Session

from contracts.events import (
    CapacityOffered,
    CapacityOfferedEvent,
    CapacityRejected,
    CapacityRejectedEvent,
    CapacityUpdatedEvent,
    Explanation,
    JobBilledEvent,
    JobCancelEvent,
    JobCancelled,
    JobCancelledEvent,
    JobCompletedEvent,
    JobKind,
    JobPlaced,
    JobPlacedEvent,
    JobQueued,
    JobQueuedEvent,
    JobRejected,
    JobRejectedEvent,
    JobRequest,
    JobRequestedEvent,
    JobStartedEvent,
    PlacementAttestation,
    PlacementClaim,
    PolicyDecisionEvent,
    PolicyDecisionRecord,
    RejectionCode,
    SiteSnapshot,
    SiteSnapshotEvent,
    SiteVerdict,
)
from services.placement.logic import (
    ACTIVE_STATES,
    RUN_END_STATE,
    JobState,
    Plan,
    PoolState,
    budget_refusal,
    conflicting_resubmission_reason,
    deadline_unreachable,
    not_cancellable_reason,
    only_waits_for_capacity,
    parse_verdicts,
    plan_placement,
    policy_input,
    probe_request,
    site_of_run,
    unknown_job_reason,
)
from services.placement.refusals import (
    CONSUMER,
    SOURCE,
    EnvelopeRefusal,
    refuse_envelope,
    refused_before_reading,
    taken_first_time,
)
from services.placement.storage import (
    JobRow,
    Market,
    PoolRow,
    add_commitment,
    add_decision,
    committed_krw,
    insert_job,
    keep_cancel,
    load_market,
    load_pools,
    new_site_snapshots,
    next_decision_seq,
    offer_beyond_bounds,
    queued_jobs,
    release,
    site_of_tenants_run,
    transition,
    try_reserve,
    upsert_offer,
)
from services.shared.batch import PoisonMessage
from services.shared.db import defer_to_commit, utc_now
from services.shared.domain.attestation import attest_placement, site_attributes_sha256, verification_failure
from services.shared.domain.catalogue import Tenant
from services.shared.domain.money import estimate_krw, period_start
from services.shared.domain.policy import PolicyEngine, PolicyEngineError, PolicyOverBudget
from services.shared.domain.signing import (
    Keyring,
    KeyRole,
    Signer,
    canonical_json,
    staleness,
)
from services.shared.domain.verdict_cache import VerdictCache
from services.shared.health import new_worker_id
from services.shared.inbox import claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox, relay_to_tenant

# A freed pool re-plans at most this many queued jobs in one transaction; the sweep picks up the rest.
QUEUE_BATCH = 50
PRIORITY_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
# Attempts to reserve when a concurrent worker takes the chosen GPUs first.
RESERVE_ATTEMPTS = 3


@dataclass
class PlacementContext:
    policy: PolicyEngine
    tenants: dict[str, Tenant]
    # Tenants' keys sign requests and cancels; factories' keys sign capacity offers and updates and runs'
    # starts and ends (with no keyring, all of these are refused).
    keyring: Keyring = field(default_factory=Keyring.empty)
    clock: Callable[[], datetime] = field(default=utc_now)
    # Listed auditors: a signed offer must verify against one of these or it is refused.
    auditor_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    # A decision slower than this is not used: the job waits and is decided again (fail closed).
    policy_budget_ms: float = 250.0
    # This worker's verdicts of the current revision, so a decision evaluates only sites it has not judged.
    verdicts: VerdictCache = field(default_factory=VerdictCache)
    # The periodic pass re-plans a queued job only if nothing re-planned it for this long.
    queue_retry: timedelta = timedelta(seconds=60)
    # Seconds from some fixed point, to time each policy evaluation against its budget.
    timer: Callable[[], float] = field(default=time.perf_counter)
    # The marketplace's key, signing each placement's attestation (none: placements go unattested).
    attester: Signer | None = None
    # A request signed longer ago than this is rejected: the inbox remembers envelope ids, this bounds how
    # old a replayed one can be.
    signature_max_age: timedelta = timedelta(seconds=900)
    # Numbers this worker's decisions 1, 2, ...: governance reports a gap in any worker's numbers.
    worker_id: str = field(default_factory=new_worker_id)


def on_job_requested(ctx: PlacementContext, session: Session, event: JobRequestedEvent) -> None:
    request = event.data
    # Before anything is recorded: a forged request must not even reserve its job id.
    if refused_before_reading(ctx.keyring, session, event, request.tenant_id):
        return
    job_id = str(request.job_id)
    envelope = EnvelopeRefusal(
        request.tenant_id, request.job_id, request.client_request_id, event.id, event.type
    )
    if not taken_first_time(session, event, envelope):
        return
    job = JobRow(
        job_id=job_id,
        tenant_id=request.tenant_id,
        client_request_id=request.client_request_id,
        request=request.model_dump(mode="json"),
        state=JobState.REQUESTED,
        gpu_count=request.gpu_count,
        priority_rank=PRIORITY_RANK[request.priority],
    )
    # Inserted as a plain row; `job` stays a detached snapshot the decision reads.
    if not insert_job(session, job):
        _request_for_a_known_job(session, event, job)
        return
    if event.subject != request.tenant_id:
        _reject(
            session,
            job,
            request,
            RejectionCode.INVALID_REQUEST,
            f"the envelope's subject {event.subject!r} is not the job's tenant {request.tenant_id!r}",
        )
        return
    stale = staleness(event.time, ctx.clock(), ctx.signature_max_age)
    if stale is not None:
        _reject(session, job, request, RejectionCode.STALE_REQUEST, f"the request was {stale}")
        return
    tenant = ctx.tenants.get(request.tenant_id)
    if tenant is None:
        _reject(
            session,
            job,
            request,
            RejectionCode.UNKNOWN_TENANT,
            f"tenant {request.tenant_id!r} is not in the tenant registry",
        )
        return
    _decide(session, ctx, job, request, tenant)


def _request_for_a_known_job(session: Session, event: JobRequestedEvent, job: JobRow) -> None:
    """A request whose job id is taken: a resubmission of the same request changes nothing; a different one
    is refused; the request of a job its cancel overtook is cancelled on arrival."""
    request = event.data
    log = get_logger(job_id=job.job_id, event_id=str(event.id), tenant_id=request.tenant_id)
    existing = session.get(JobRow, job.job_id)
    assert existing is not None, "the insert found the row taken"
    if existing.state == JobState.CANCELLED and not existing.request:
        existing.request, existing.client_request_id = job.request, job.client_request_id
        cancelled = JobCancelled(
            job_id=request.job_id,
            tenant_id=request.tenant_id,
            stage="before_request",
            reason=existing.reason or "",
        )
        answer = JobCancelledEvent.create(source=SOURCE, subject=request.tenant_id, data=cancelled)
        add_to_outbox(session, answer, job.job_id)
        log.info("request_cancelled_on_arrival")
        return
    if existing.request == job.request:
        log.info("duplicate_request_ignored", client_request_id=request.client_request_id)
        return
    refuse_envelope(
        session,
        EnvelopeRefusal(request.tenant_id, request.job_id, request.client_request_id, event.id, event.type),
        RejectionCode.CONFLICTING_RESUBMISSION,
        conflicting_resubmission_reason(
            request.client_request_id, existing.request, job.request, existing.state
        ),
    )


def on_job_cancel(ctx: PlacementContext, session: Session, event: JobCancelEvent) -> None:
    """Honour a tenant's cancel at any stage. A placed job keeps its GPUs until its factory confirms it
    stopped (jobs.completed with status cancelled), so capacity is never handed out twice. A cancel that
    cannot apply is answered on the tenant's stream."""
    cancel = event.data
    if refused_before_reading(ctx.keyring, session, event, cancel.tenant_id):
        return
    refusal = EnvelopeRefusal(cancel.tenant_id, cancel.job_id, "", event.id, event.type)
    if not taken_first_time(session, event, refusal):
        return
    job_id = str(cancel.job_id)
    log = get_logger(job_id=job_id, tenant_id=cancel.tenant_id)
    if cancel.tenant_id != event.subject:
        reason = f"the envelope's subject {event.subject!r} is not the cancel's tenant {cancel.tenant_id!r}"
        refuse_envelope(session, refusal, RejectionCode.INVALID_REQUEST, reason)
        return
    job = session.get(JobRow, job_id)
    if job is not None and job.tenant_id != cancel.tenant_id:
        # Answered as for a job nobody has: no tenant learns another's job ids (a tenant's own requests can
        # never have this id, which derives from the tenant).
        refuse_envelope(session, refusal, RejectionCode.UNKNOWN_JOB, unknown_job_reason(job_id))
        return
    stage: str
    if job is None or not job.request:  # no request yet (perhaps a cancel before this one kept its place)
        if job is None:
            # The cancel may have overtaken its request (they travel on different topics): the request will
            # find this row and be cancelled on arrival.
            keep_cancel(session, job_id, cancel.tenant_id, cancel.reason)
        refuse_envelope(session, refusal, RejectionCode.UNKNOWN_JOB, unknown_job_reason(job_id))
        return
    if transition(
        session, job_id, {JobState.REQUESTED, JobState.QUEUED}, JobState.CANCELLED, reason=cancel.reason
    ):
        stage = job.state
    elif transition(
        session, job_id, {JobState.PLACED, JobState.RUNNING}, JobState.CANCELLING, reason=cancel.reason
    ):
        stage = "placed"
    else:
        log.info("cancel_refused", state=job.state)
        refuse_envelope(session, refusal, RejectionCode.NOT_CANCELLABLE, not_cancellable_reason(job.state))
        return
    cancelled = JobCancelled(
        job_id=cancel.job_id,
        tenant_id=cancel.tenant_id,
        stage=stage,
        site_id=job.site_id,
        reason=cancel.reason,
    )
    add_to_outbox(
        session, JobCancelledEvent.create(source=SOURCE, subject=cancel.tenant_id, data=cancelled), job_id
    )
    log.info("job_cancelled", stage=stage)


def on_capacity_offered(ctx: PlacementContext, session: Session, event: CapacityOfferedEvent) -> None:
    ctx.keyring.require(event, KeyRole.FACTORY, event.data.site.site_id)
    if not claim_event(session, CONSUMER, event):
        return
    offer = event.data
    attestation = offer.attestation
    failure = (
        _unknown_countries(offer)
        or (verification_failure(offer.site, attestation, ctx.auditor_keys) if attestation else None)
        or offer_beyond_bounds(session, offer)
    )
    if failure is not None:
        rejected = CapacityRejected(site_id=offer.site.site_id, reason=failure)
        add_to_outbox(
            session,
            CapacityRejectedEvent.create(source=SOURCE, subject=offer.site.site_id, data=rejected),
            offer.site.site_id,
        )
        get_logger(site_id=offer.site.site_id).warning("capacity_offer_refused", reason=failure)
        return
    upsert_offer(session, offer)
    get_logger(site_id=event.data.site.site_id).info("capacity_offered", pools=len(event.data.pools))
    _replan_queue_at_commit(ctx, session, market_changed=True)


def _unknown_countries(offer: CapacityOffered) -> str | None:
    unknown = offer.unknown_countries()
    return f"not ISO 3166-1 alpha-2 country codes: {', '.join(unknown)}" if unknown else None


def on_capacity_updated(ctx: PlacementContext, session: Session, event: CapacityUpdatedEvent) -> None:
    ctx.keyring.require(event, KeyRole.FACTORY, event.data.site_id)
    if not claim_event(session, CONSUMER, event):
        return
    update = event.data
    pool = session.get(PoolRow, update.pool_id)
    if pool is None or pool.site_id != update.site_id:
        get_logger(pool_id=update.pool_id).warning("capacity_update_for_unknown_pool")
        return
    pool.status = update.status
    if update.gpu_count is not None:
        pool.total_gpus = update.gpu_count
    _replan_queue_at_commit(ctx, session)


def on_job_started(ctx: PlacementContext, session: Session, event: JobStartedEvent) -> None:
    """The factory started the run. Its end may overtake this (another topic): then nothing changes."""
    ctx.keyring.require(event, KeyRole.FACTORY, event.data.site_id)
    if not claim_event(session, CONSUMER, event):
        return
    started = event.data
    placed_at = site_of_tenants_run(session, str(started.job_id), started.tenant_id, started.attempt)
    _require_its_own_run(event, placed_at)
    transition(session, str(started.job_id), {JobState.PLACED}, JobState.RUNNING, at_attempt=started.attempt)
    relay_to_tenant(session, event, str(started.job_id))


def on_job_billed(session: Session, event: JobBilledEvent) -> None:
    """A run's bill replaces its estimate in the tenant's budget."""
    if not claim_event(session, CONSUMER, event):
        return
    billed = event.data
    job = session.get(JobRow, str(billed.job_id))
    if job is None:
        return
    replaced_estimate = job.estimate_krw if billed.attempt == job.attempt else 0
    add_commitment(session, job, billed.amount_krw - replaced_estimate)
    job.billed_krw += billed.amount_krw
    job.estimate_krw -= replaced_estimate


def on_job_completed(ctx: PlacementContext, session: Session, event: JobCompletedEvent) -> None:
    # A forged end would free the GPUs of a run still going, or retry a job elsewhere.
    ctx.keyring.require(event, KeyRole.FACTORY, event.data.site_id)
    if not claim_event(session, CONSUMER, event):
        return
    done = event.data
    job = session.get(JobRow, str(done.job_id))
    log = get_logger(job_id=str(done.job_id), attempt=done.attempt)
    placed_at = None
    if job is not None and job.tenant_id == done.tenant_id:
        placed_at = site_of_run(job.site_id, job.attempt, job.failed_sites, done.attempt)
    _require_its_own_run(event, placed_at)
    relay_to_tenant(session, event, str(done.job_id))
    if job is None or job.pool_id is None or job.attempt != done.attempt:
        log.warning("end_of_an_earlier_run_ignored", current_attempt=job.attempt if job else None)
        return
    pool_id = job.pool_id
    request = JobRequest.model_validate(job.request)
    tenant = ctx.tenants.get(job.tenant_id)
    retry = done.status == "failed" and job.attempt < request.max_attempts and tenant is not None
    if retry and transition(
        session,
        job.job_id,
        {JobState.PLACED, JobState.RUNNING},
        JobState.REQUESTED,
        attempt=job.attempt + 1,
        failed_sites=[*job.failed_sites, done.site_id],
        estimate_krw=0,  # the failed run's cost arrives with its bill
        site_id=None,
        pool_id=None,
        reason=f"run {job.attempt} failed at {done.site_id}{f' ({done.reason})' if done.reason else ''}; "
        "retrying elsewhere",
    ):
        release(session, pool_id, job.gpu_count)
        add_commitment(session, job, -job.estimate_krw)
        session.refresh(job)
        log.info("failed_run_retried", site_id=done.site_id, next_attempt=job.attempt)
        assert tenant is not None
        _decide(session, ctx, job, request, tenant)
    else:
        final_state = RUN_END_STATE[done.status]
        if transition(session, job.job_id, set(ACTIVE_STATES), final_state):
            release(session, pool_id, job.gpu_count)
            log.info("capacity_released", pool_id=pool_id, gpus=job.gpu_count)
    _replan_queue_at_commit(ctx, session)


def _require_its_own_run(event: JobStartedEvent | JobCompletedEvent, placed_at: str | None) -> None:
    """A factory key speaks for its sites, and a site only for the runs placed there: a report on any other
    run (of another site or tenant, or never placed) changes nothing and reaches no tenant's stream, nor
    does one whose envelope names another tenant as its subject."""
    report = event.data
    if event.subject != report.tenant_id:
        raise PoisonMessage(f"a report on tenant {report.tenant_id}'s run sent with subject {event.subject}")
    if placed_at != report.site_id:
        raise PoisonMessage(
            f"run {report.attempt} of job {report.job_id} of tenant {report.tenant_id} was not placed at "
            f"{report.site_id}, which reports on it"
        )


def _replan_queue_at_commit(ctx: PlacementContext, session: Session, market_changed: bool = False) -> None:
    """Capacity changed: re-plan the queue once, when every event of the transaction (a batch) is in. A
    changed market (a site offered anew) may allow sites no earlier decision did."""
    defer_to_commit(
        session, "placement.retry_queued", lambda s: retry_queued(ctx, s, market_changed=market_changed)
    )


def sweep_queue(ctx: PlacementContext, session: Session) -> int:
    """The periodic pass: reject queued jobs whose deadline passed, or can no longer be met by a run
    started now (no policy evaluation needed), and re-plan only those no capacity event re-planned lately
    (e.g. after an over-budget decision)."""
    now = ctx.clock()
    moved = 0
    for job in queued_jobs(session, QUEUE_BATCH):
        request = JobRequest.model_validate(job.request)
        if request.deadline <= now:
            reason = f"the job's deadline {request.deadline.isoformat()} passed while it waited for capacity"
            _reject(session, job, request, RejectionCode.DEADLINE_PASSED, reason)
            moved += 1
        elif (unreachable := deadline_unreachable(request, now)) is not None:
            reason = f"{unreachable}: too little time is left after waiting for capacity"
            _reject(session, job, request, RejectionCode.DEADLINE_UNREACHABLE, reason)
            moved += 1
    return moved + retry_queued(ctx, session, untouched_since=now - ctx.queue_retry)


def retry_queued(
    ctx: PlacementContext,
    session: Session,
    untouched_since: datetime | None = None,
    market_changed: bool = False,
) -> int:
    """Re-plan queued jobs in arrival order; returns how many left the queue. After a capacity change
    (no untouched_since), a job that only waits for capacity at the sites its last decision allowed (at
    any site, when the market changed) is not decided again: that would only queue it once more. The
    periodic pass decides every job."""
    moved = 0
    pools = load_pools(session)
    for job in queued_jobs(session, QUEUE_BATCH, untouched_since):
        request = JobRequest.model_validate(job.request)
        allowed = set(job.allowed_sites)
        candidates = [p for p in pools if market_changed or not allowed or p.site_id in allowed]
        if untouched_since is None and only_waits_for_capacity(request, candidates, job.failed_sites):
            continue
        tenant = ctx.tenants.get(job.tenant_id)
        if tenant is None:
            _reject(
                session,
                job,
                request,
                RejectionCode.UNKNOWN_TENANT,
                f"tenant {job.tenant_id!r} left the registry",
            )
            moved += 1
            continue
        if _decide(session, ctx, job, request, tenant) != JobState.QUEUED:
            moved += 1
            pools = load_pools(session)
    return moved


def _decide(
    session: Session, ctx: PlacementContext, job: JobRow, request: JobRequest, tenant: Tenant
) -> JobState:
    log = get_logger(job_id=job.job_id, tenant_id=job.tenant_id)
    market = load_market(session)
    pools = load_pools(session)
    now = ctx.clock()
    decision_id = uuid.uuid4()
    # Commercial terms are not the policies' business.
    tenant_document = tenant.model_dump(mode="json", exclude_none=True, exclude={"budget", "volume_tiers"})
    document = policy_input(request, tenant_document, market.document, now)
    started = ctx.timer()

    def out_of_time() -> bool:
        return (ctx.timer() - started) * 1000 > ctx.policy_budget_ms

    try:
        decision = ctx.verdicts.decide(ctx.policy, document, market.site_digests, out_of_time)
    except PolicyOverBudget as error:
        log.error("policy_evaluation_stopped_over_budget", reason=str(error))
        stopped = f"the policy evaluation was stopped at its {ctx.policy_budget_ms:.0f} ms budget ({error})"
        return _wait_for_policy(session, ctx, job, request, decision_id, stopped)
    except PolicyEngineError as error:
        probe = policy_input(probe_request(request, now), tenant_document, market.document, now)
        if _engine_answers(ctx, probe):
            # The engine decides other requests over this market: it is this request it cannot evaluate.
            log.warning("policy_cannot_evaluate_request", error=str(error))
            reason = f"the policy cannot evaluate this request ({error}); it was not placed"
            _reject(session, job, request, RejectionCode.INVALID_REQUEST, reason)
            return JobState.REJECTED
        log.error("policy_engine_failed", error=str(error))
        return _wait_for_policy(
            session, ctx, job, request, decision_id, f"the policy engine failed ({error})"
        )
    duration_us = int((ctx.timer() - started) * 1_000_000)
    if duration_us > ctx.policy_budget_ms * 1000:
        log.error("policy_evaluation_over_budget", duration_us=duration_us)
        took = (
            f"the policy evaluation took {duration_us / 1000:.0f} ms, over its {ctx.policy_budget_ms:.0f} ms"
        )
        return _wait_for_policy(session, ctx, job, request, decision_id, f"{took} budget")
    verdicts = parse_verdicts(decision.verdicts, set(market.sites))
    _record_decision(
        session, ctx, job, decision_id, market, document, verdicts, duration_us, decision.cached_sites
    )

    plan = plan_placement(request, verdicts, pools, decision_id, ctx.policy.revision, now, job.failed_sites)
    for _ in range(RESERVE_ATTEMPTS):
        if plan.outcome != JobState.PLACED or plan.chosen is None:
            break
        refusal = _budget_refusal(session, ctx, tenant, job, request, plan.chosen)
        if refusal is not None:
            _reject(session, job, request, RejectionCode.BUDGET_EXCEEDED, refusal, plan.explanation)
            return JobState.REJECTED
        if try_reserve(session, plan.chosen.pool_id, request.gpu_count):
            _place(session, ctx, job, request, plan)
            log.info(
                "job_placed",
                site_id=plan.chosen.site_id,
                pool_id=plan.chosen.pool_id,
                decision_id=str(decision_id),
            )
            return JobState.PLACED
        log.info("reservation_lost_race", pool_id=plan.chosen.pool_id)
        plan = plan_placement(
            request, verdicts, load_pools(session), decision_id, ctx.policy.revision, now, job.failed_sites
        )
    if plan.outcome == JobState.PLACED:
        plan = Plan(
            JobState.QUEUED, plan.explanation, reason="capacity was taken by concurrent placements; waiting"
        )
    if plan.outcome == JobState.QUEUED:
        _queue(session, job, request, plan)
        return JobState.QUEUED
    assert plan.code is not None
    _reject(session, job, request, plan.code, plan.reason, plan.explanation)
    return JobState.REJECTED


def _engine_answers(ctx: PlacementContext, document: dict[str, Any]) -> bool:
    try:
        ctx.policy.decide(document)
    except PolicyEngineError:
        return False
    return True


def _wait_for_policy(
    session: Session,
    ctx: PlacementContext,
    job: JobRow,
    request: JobRequest,
    decision_id: uuid.UUID,
    failure: str,
) -> JobState:
    """Fail closed: with no allowing decision in time nothing is placed. The job waits and the queue's
    periodic pass decides it again, so an engine outage delays jobs and loses none."""
    reason = f"{failure}; nothing was placed and the job will be decided again"
    explanation = Explanation(
        decision_id=decision_id, policy_revision=ctx.policy.revision, summary=reason, sites=[]
    )
    _queue(session, job, request, Plan(JobState.QUEUED, explanation, reason=reason))
    return JobState.QUEUED


def _budget_refusal(
    session: Session, ctx: PlacementContext, tenant: Tenant, job: JobRow, request: JobRequest, pool: PoolState
) -> str | None:
    """Why the tenant's budget cannot take this run at this pool, or None if it can (or has no budget)."""
    budget = tenant.budget
    if budget is None:
        return None
    since = None if budget.kind == "prepaid" else period_start(ctx.clock())
    # This job's own estimate is already among the commitments when it is decided again.
    committed = committed_krw(session, tenant.tenant_id, since) - job.estimate_krw
    return budget_refusal(budget, committed, request, pool)


def _record_decision(
    session: Session,
    ctx: PlacementContext,
    job: JobRow,
    decision_id: uuid.UUID,
    market: Market,
    document: dict[str, Any],
    verdicts: dict[str, SiteVerdict],
    duration_us: int,
    cached_sites: frozenset[str],
) -> None:
    """The decision, for placement's own record and, through the outbox, governance's audit log. The sites
    it judged travel by digest: each site's document goes out on market.sites the first time a decision
    refers to it, so a decision's event stays small however large the market; the job's request is on
    jobs.requested already."""
    for site_id in new_site_snapshots(session, market):
        snapshot = SiteSnapshot(
            site_sha256=market.site_digests[site_id], site_id=site_id, document=market.document[site_id]
        )
        add_to_outbox(
            session, SiteSnapshotEvent.create(source=SOURCE, subject=site_id, data=snapshot), site_id
        )
    site_sha256 = {site_id: market.site_digests[site_id] for site_id in document["sites"]}
    # The job is on jobs.requested, and its sites on market.sites: the decision names both by digest.
    job_sha256 = hashlib.sha256(canonical_json(document["job"])).hexdigest()
    recorded_input = {key: value for key, value in document.items() if key not in {"sites", "job"}}
    input_sha256 = hashlib.sha256(
        canonical_json({**recorded_input, "job": document["job"], "sites": site_sha256})
    ).hexdigest()
    record = PolicyDecisionRecord(
        decision_id=decision_id,
        job_id=uuid.UUID(job.job_id),
        tenant_id=job.tenant_id,
        policy_revision=ctx.policy.revision,
        engine=ctx.policy.name,
        input_sha256=input_sha256,
        duration_us=duration_us,
        sites=sorted(verdicts.values(), key=lambda v: v.site_id),
        input=recorded_input,
        site_sha256=site_sha256,
        job_sha256=job_sha256,
        cached_sites=sorted(cached_sites),
        worker_id=ctx.worker_id,
        worker_seq=next_decision_seq(session, ctx.worker_id),
    )
    add_decision(session, record)
    add_to_outbox(
        session, PolicyDecisionEvent.create(source=SOURCE, subject=job.tenant_id, data=record), job.job_id
    )


def _place(session: Session, ctx: PlacementContext, job: JobRow, request: JobRequest, plan: Plan) -> None:
    chosen = plan.chosen
    assert chosen is not None
    estimate = estimate_krw(request.gpu_count, request.expected_hours, chosen.price_krw_per_gpu_hour)
    moved = transition(
        session,
        job.job_id,
        {JobState.REQUESTED, JobState.QUEUED},
        JobState.PLACED,
        site_id=chosen.site_id,
        pool_id=chosen.pool_id,
        price_krw_per_gpu_hour=chosen.price_krw_per_gpu_hour,
        decision_id=str(plan.explanation.decision_id),
        policy_revision=plan.explanation.policy_revision,
        reason=plan.explanation.summary,
        estimate_krw=estimate,
    )
    if moved:  # the commitments follow the job's row exactly
        add_commitment(session, job, estimate - job.estimate_krw)
    per_token = request.kind is JobKind.INFERENCE and chosen.price_krw_per_million_output_tokens is not None
    placed = JobPlaced(
        job_id=request.job_id,
        tenant_id=request.tenant_id,
        client_request_id=request.client_request_id,
        job_name=request.name,
        kind=request.kind,
        site_id=chosen.site_id,
        pool_id=chosen.pool_id,
        accelerator_model=chosen.accelerator_model,
        gpu_count=request.gpu_count,
        expected_hours=request.expected_hours,
        price_krw_per_gpu_hour=chosen.price_krw_per_gpu_hour,
        explanation=plan.explanation,
        attempt=job.attempt,
        failed_sites=job.failed_sites,
        attestation=_attestation(session, ctx, job, chosen.site_id, chosen.pool_id, plan.explanation),
        price_krw_per_million_input_tokens=chosen.price_krw_per_million_input_tokens if per_token else None,
        price_krw_per_million_output_tokens=chosen.price_krw_per_million_output_tokens if per_token else None,
        priority=request.priority,
        deadline=request.deadline,
    )
    add_to_outbox(
        session, JobPlacedEvent.create(source=SOURCE, subject=request.tenant_id, data=placed), job.job_id
    )


def _attestation(
    session: Session, ctx: PlacementContext, job: JobRow, site_id: str, pool_id: str, explanation: Explanation
) -> PlacementAttestation | None:
    if ctx.attester is None:
        return None
    market = load_market(session)
    claim = PlacementClaim(
        job_id=uuid.UUID(job.job_id),
        tenant_id=job.tenant_id,
        attempt=job.attempt,
        site_id=site_id,
        pool_id=pool_id,
        site_attributes_sha256=site_attributes_sha256(market.sites[site_id]),
        site_verified_by=market.verified_by.get(site_id),
        policy_revision=explanation.policy_revision,
        decision_id=explanation.decision_id,
        placed_at=ctx.clock(),
    )
    return attest_placement(ctx.attester, claim)


def _queue(session: Session, job: JobRow, request: JobRequest, plan: Plan) -> None:
    allowed = sorted(site.site_id for site in plan.explanation.sites if site.policy_allowed)
    if job.state == JobState.QUEUED:
        job.updated_at = utc_now()  # re-planned just now: the sweep leaves it alone for a while
        job.allowed_sites = allowed
        return  # still waiting: the tenant already knows, and why
    transition(
        session, job.job_id, {JobState.REQUESTED}, JobState.QUEUED, reason=plan.reason, allowed_sites=allowed
    )
    queued = JobQueued(
        job_id=request.job_id,
        tenant_id=request.tenant_id,
        client_request_id=request.client_request_id,
        reason=plan.reason,
        explanation=plan.explanation,
    )
    add_to_outbox(
        session, JobQueuedEvent.create(source=SOURCE, subject=request.tenant_id, data=queued), job.job_id
    )


def _reject(
    session: Session,
    job: JobRow,
    request: JobRequest,
    code: RejectionCode,
    reason: str,
    explanation: Explanation | None = None,
) -> None:
    transition(session, job.job_id, {JobState.REQUESTED, JobState.QUEUED}, JobState.REJECTED, reason=reason)
    get_logger(job_id=job.job_id, tenant_id=job.tenant_id).info(
        "job_rejected", code=code.value, reason=reason
    )
    rejected = JobRejected(
        job_id=request.job_id,
        tenant_id=request.tenant_id,
        client_request_id=request.client_request_id,
        code=code,
        reason=reason,
        explanation=explanation,
    )
    add_to_outbox(
        session, JobRejectedEvent.create(source=SOURCE, subject=request.tenant_id, data=rejected), job.job_id
    )
