"""Placement decisions as pure functions: no database, no Kafka, no clock of their own.

Given the job, the policy verdict per site and each site's pools, decide placed / queued / rejected and
explain every site: its policy verdict beside its capacity facts, so a tenant can see why each lost.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import ValidationError

from contracts.envelope import portability_problem
from contracts.events import (
    JOB_ID_NAMESPACE,
    CapacityOffered,
    ExemptedFinding,
    Explanation,
    FieldError,
    JobKind,
    JobRequest,
    RejectionCode,
    RuleViolation,
    SiteAssessment,
    SiteAttributes,
    SiteVerdict,
    job_id_for,
)
from contracts.limits import MAX_FINDING_BYTES_PER_SITE
from services.shared.domain.catalogue import Budget
from services.shared.domain.money import estimate_krw


@dataclass(frozen=True)
class PoolState:
    pool_id: str
    site_id: str
    accelerator_model: str
    generation: int
    accelerator_origin: str
    total_gpus: int
    reserved_gpus: int
    price_krw_per_gpu_hour: int
    power_kw_per_gpu: float
    pue: float
    status: str
    region: str = ""
    price_krw_per_million_input_tokens: int | None = None
    price_krw_per_million_output_tokens: int | None = None

    @property
    def free_gpus(self) -> int:
        # A pool shrunk below its reservations has none free until enough of its jobs finish.
        return max(0, self.total_gpus - self.reserved_gpus)

    @property
    def facility_kw_per_gpu(self) -> float:
        """Energy per GPU-hour at the meter (kWh), the second ranking key."""
        return self.power_kw_per_gpu * self.pue


def offered_pools(offers: Sequence[CapacityOffered]) -> list[PoolState]:
    """Every pool of some capacity offers, all GPUs free, as placement sees it before any reservation."""
    return [
        PoolState(
            pool.pool_id,
            offer.site.site_id,
            pool.accelerator_model,
            pool.generation,
            pool.accelerator_origin,
            pool.gpu_count,
            0,
            pool.price_krw_per_gpu_hour,
            pool.power_kw_per_gpu,
            pool.pue,
            "available",
            offer.site.region,
            pool.price_krw_per_million_input_tokens,
            pool.price_krw_per_million_output_tokens,
        )
        for offer in offers
        for pool in offer.pools
    ]


class JobState(StrEnum):
    """Where a job is in placement's hands."""

    REQUESTED = "requested"
    QUEUED = "queued"
    PLACED = "placed"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


# The states a job may move to from each state. A failed run whose job may run again goes back to requested;
# a state that leads nowhere is terminal.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.REQUESTED: frozenset({JobState.QUEUED, JobState.PLACED, JobState.REJECTED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.PLACED, JobState.REJECTED, JobState.CANCELLED}),
    JobState.PLACED: frozenset(
        {
            JobState.RUNNING,
            JobState.CANCELLING,
            JobState.REQUESTED,
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.CANCELLING, JobState.REQUESTED, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.CANCELLING: frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.REJECTED: frozenset(),
}
TERMINAL_STATES = frozenset(state for state, onward in TRANSITIONS.items() if not onward)
# What a run's end (jobs.completed status) makes of a job that does not run again.
RUN_END_STATE: dict[str, JobState] = {
    "succeeded": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
}
# Holding GPUs: placed at a site until its factory reports the run ended.
ACTIVE_STATES = frozenset({JobState.PLACED, JobState.RUNNING, JobState.CANCELLING})


def forbidden_transitions(from_states: set[JobState], to_state: JobState) -> list[str]:
    """The moves among these that the state machine does not allow."""
    return [f"{state} -> {to_state}" for state in sorted(from_states) if to_state not in TRANSITIONS[state]]


@dataclass(frozen=True)
class Plan:
    outcome: Literal[JobState.PLACED, JobState.QUEUED, JobState.REJECTED]
    explanation: Explanation
    chosen: PoolState | None = None
    code: RejectionCode | None = None
    reason: str = ""


def policy_input(
    job: JobRequest, tenant: dict[str, Any], sites: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The one input document that lets the policy judge every candidate site at once; `sites` is the
    market's part (`sites_document`), the same for every job until an offer changes it."""
    return {
        "job": job.policy_document(),
        "tenant": tenant,
        "sites": sites,
        "now": now.isoformat(),
    }


def probe_request(request: JobRequest, now: datetime) -> JobRequest:
    """The plainest request the tenant could send: when the engine decides it but failed on `request`,
    the failure is the request's own, not an outage."""
    return JobRequest(
        tenant_id=request.tenant_id,
        client_request_id="probe",
        name="probe",
        kind=JobKind.INFERENCE,
        gpu_count=1,
        expected_hours=1,
        deadline=now + timedelta(days=1),
    )


def sites_document(
    sites: dict[str, SiteAttributes], pools: list[PoolState], verified_by: dict[str, str | None] | None = None
) -> dict[str, Any]:
    """Each site's attributes and pools as the policy reads them. A site's `verified` says whether a
    listed auditor's signature covers its attributes."""
    verifiers = verified_by or {}
    site_pools: dict[str, list[dict[str, Any]]] = {site_id: [] for site_id in sites}
    for pool in pools:
        if pool.site_id in site_pools:
            site_pools[pool.site_id].append(
                {
                    "pool_id": pool.pool_id,
                    "accelerator_model": pool.accelerator_model,
                    "generation": pool.generation,
                    "accelerator_origin": pool.accelerator_origin,
                }
            )
    return {
        site_id: {
            **site.model_dump(mode="json", exclude_none=True),
            "pools": site_pools[site_id],
            "verified": verifiers.get(site_id) is not None,
        }
        for site_id, site in sites.items()
    }


def parse_verdicts(decision: dict[str, Any], site_ids: set[str]) -> dict[str, SiteVerdict]:
    """The policy's answer as verdicts; a site the policy said nothing about is denied (fail closed)."""
    verdicts: dict[str, SiteVerdict] = {}
    for site_id in site_ids:
        raw = decision.get(site_id)
        if raw is None:
            verdicts[site_id] = SiteVerdict(
                site_id=site_id,
                allowed=False,
                violations=[
                    RuleViolation(
                        rule="ENGINE", message="the policy returned no verdict for this site", mode="deny"
                    )
                ],
            )
            continue
        verdicts[site_id] = within_budget(
            SiteVerdict(
                site_id=site_id,
                allowed=bool(raw.get("allowed")),
                violations=sorted((RuleViolation(**v) for v in raw.get("violations", [])), key=_by_rule),
                warnings=sorted((RuleViolation(**w) for w in raw.get("warnings", [])), key=_by_rule),
                exempted=[ExemptedFinding(**e) for e in raw.get("exempted", [])],
            )
        )
    return verdicts


def _by_rule(violation: RuleViolation) -> tuple[str, str]:
    return violation.rule, violation.message


# What one finding costs in an event beyond its text: member names, quotes and its mode.
FINDING_OVERHEAD_BYTES = 48
# How much of the rules left out a summing-up finding names.
SUMMARY_LENGTH = 300


def within_budget(verdict: SiteVerdict) -> SiteVerdict:
    """The verdict with its findings' text within MAX_FINDING_BYTES_PER_SITE, violations first, then
    warnings, then exemptions (a faulty revision could find without end). Each list's findings past the
    budget are summed up in one last finding of that list, in the mode of the first left out; whether the
    site is allowed is the policy's, whatever was left out."""
    budget, cut = MAX_FINDING_BYTES_PER_SITE, False
    kept: dict[str, list[Any]] = {}
    for name in ("violations", "warnings", "exempted"):
        findings: list[Any] = getattr(verdict, name)
        kept[name] = []
        for index, finding in enumerate(findings):
            cost = _cost_bytes(finding)
            if cost > budget:
                kept[name].append(_left_out(findings[index:]))
                budget, cut = 0, True
                break
            budget -= cost
            kept[name].append(finding)
    return verdict.model_copy(update=kept) if cut else verdict


def _cost_bytes(finding: RuleViolation | ExemptedFinding) -> int:
    """What a finding's text costs in an event (its UTF-8 text fields, as its JSON holds them)."""
    texts: tuple[str, ...]
    if isinstance(finding, RuleViolation):
        texts = (finding.rule, finding.message, finding.mode)
    else:
        texts = (finding.rule, finding.message, finding.approver, finding.expires.isoformat(), finding.reason)
    return FINDING_OVERHEAD_BYTES + sum(len(text.encode()) for text in texts)


def _left_out(findings: Sequence[RuleViolation | ExemptedFinding]) -> RuleViolation:
    rules = sorted({finding.rule for finding in findings})
    listed = ", ".join(rules)
    if len(listed) > SUMMARY_LENGTH:
        listed = listed[: SUMMARY_LENGTH - 1] + "\u2026"
    first = findings[0]
    return RuleViolation(
        rule=first.rule[:SUMMARY_LENGTH],
        message=f"and {len(findings)} more findings, not listed, of {listed}",
        mode=first.mode if isinstance(first, RuleViolation) else "dryrun",
    )


def _static_misfit(job: JobRequest, pool: PoolState, failed_sites: Sequence[str]) -> str | None:
    """Why this pool could never run the job, however much capacity frees up; None if it could."""
    if pool.status == "withdrawn":
        return f"{pool.pool_id} is withdrawn"
    if pool.site_id in failed_sites:
        return f"an earlier run of this job failed at {pool.site_id}; a retry goes elsewhere"
    if pool.region in job.excluded_regions:
        return f"{pool.pool_id} is in {pool.region}, a region the job excludes"
    if job.accelerator_model and pool.accelerator_model.lower() != job.accelerator_model.lower():
        return f"{pool.pool_id} offers {pool.accelerator_model}, not {job.accelerator_model}"
    if job.min_generation and pool.generation < job.min_generation:
        return f"{pool.pool_id} is generation {pool.generation}, below the minimum {job.min_generation}"
    if job.max_price_krw_per_gpu_hour and pool.price_krw_per_gpu_hour > job.max_price_krw_per_gpu_hour:
        return (
            f"{pool.pool_id} costs {pool.price_krw_per_gpu_hour:,} KRW/GPU-h, "
            f"above the maximum {job.max_price_krw_per_gpu_hour:,}"
        )
    if pool.total_gpus < job.gpu_count:
        return f"{pool.pool_id} has {pool.total_gpus} GPUs in all, the job needs {job.gpu_count}"
    return None


def _current_misfit(job: JobRequest, pool: PoolState) -> str | None:
    """Why this pool cannot take the job right now (it could later)."""
    if pool.status == "maintenance":
        return f"{pool.pool_id} is in maintenance"
    if pool.free_gpus < job.gpu_count:
        return (
            f"{pool.pool_id} has {pool.free_gpus} of {pool.total_gpus} GPUs free, "
            f"the job needs {job.gpu_count}"
        )
    return None


def ranking_key(pool: PoolState, preferred_regions: Sequence[str] = ()) -> tuple[int, float, int, str, str]:
    # Price, then energy per GPU-hour, then the tenant's region preference, then ids: the same inputs
    # always give the same order.
    preference = 0 if pool.region in preferred_regions else 1
    return (
        pool.price_krw_per_gpu_hour,
        round(pool.facility_kw_per_gpu, 6),
        preference,
        pool.site_id,
        pool.pool_id,
    )


def site_of_run(
    current_site: str | None, current_attempt: int, failed_sites: Sequence[str], attempt: int
) -> str | None:
    """Where run `attempt` of a job was placed: an earlier run at the site it failed at (a job is retried
    only after a failed run), the current run at the job's site (None while it is not placed)."""
    if attempt == current_attempt:
        return current_site
    return failed_sites[attempt - 1] if 1 <= attempt <= len(failed_sites) else None


def only_waits_for_capacity(
    job: JobRequest, pools: Sequence[PoolState], failed_sites: Sequence[str] = ()
) -> bool:
    """Whether, policy aside, some pool could take the job once capacity frees but none can right now: a
    queued job in that state would be queued again by a new decision, so it can wait."""
    feasible = [pool for pool in pools if _static_misfit(job, pool, failed_sites) is None]
    return bool(feasible) and all(_current_misfit(job, pool) is not None for pool in feasible)


def plan_placement(
    job: JobRequest,
    verdicts: dict[str, SiteVerdict],
    pools: list[PoolState],
    decision_id: uuid.UUID,
    policy_revision: str,
    now: datetime,
    failed_sites: Sequence[str] = (),
) -> Plan:
    def explain(summary: str, assessments: list[SiteAssessment]) -> Explanation:
        return Explanation(
            decision_id=decision_id, policy_revision=policy_revision, summary=summary, sites=assessments
        )

    def rank(pool: PoolState) -> tuple[int, float, int, str, str]:
        return ranking_key(pool, job.preferred_regions)

    pools_by_site: dict[str, list[PoolState]] = {site_id: [] for site_id in verdicts}
    for pool in pools:
        pools_by_site.setdefault(pool.site_id, []).append(pool)

    fitting_now: list[PoolState] = []
    could_fit_later: list[PoolState] = []
    best_by_site: dict[str, PoolState] = {}
    capacity_reasons: dict[str, list[str]] = {}
    fit: dict[str, Literal["now", "later", "never"]] = {}
    for site_id in sorted(pools_by_site):
        reasons: list[str] = []
        site_fits: list[PoolState] = []
        fit[site_id] = "never"
        for pool in sorted(pools_by_site[site_id], key=rank):
            static = _static_misfit(job, pool, failed_sites)
            if static:
                reasons.append(static)
                continue
            current = _current_misfit(job, pool)
            if current:
                reasons.append(current)
                could_fit_later.append(pool)
                fit[site_id] = "later"
                continue
            site_fits.append(pool)
        if not pools_by_site[site_id]:
            reasons.append("no pool offered")
        if site_fits:
            best_by_site[site_id] = site_fits[0]
            fit[site_id] = "now"
            reasons = []
        capacity_reasons[site_id] = reasons
        if verdicts.get(site_id, SiteVerdict(site_id=site_id, allowed=False)).allowed:
            fitting_now.extend(site_fits[:1])

    ranked = sorted(fitting_now, key=rank)
    rank_of = {pool.site_id: position for position, pool in enumerate(ranked, start=1)}

    def assessment(site_id: str, verdict: SiteVerdict) -> SiteAssessment:
        best = best_by_site.get(site_id)
        # The ranking's inputs are recorded, so that what-if ranks a replay exactly as placement did.
        price, energy, preference, _, _ = rank(best) if best else (None, None, None, None, None)
        return SiteAssessment(
            site_id=site_id,
            policy_allowed=verdict.allowed,
            violations=verdict.violations,
            warnings=verdict.warnings,
            exempted=verdict.exempted,
            capacity_reasons=capacity_reasons.get(site_id, ["no pool offered"]),
            pool_id=best.pool_id if best else None,
            price_krw_per_gpu_hour=price,
            rank=rank_of.get(site_id),
            fit=fit.get(site_id, "never"),
            energy_kwh_per_gpu_hour=energy,
            region_preferred=None if preference is None else preference == 0,
        )

    assessments = [assessment(site_id, verdict) for site_id, verdict in sorted(verdicts.items())]
    allowed_sites = [s for s in assessments if s.policy_allowed]

    if job.deadline <= now:
        return Plan(
            JobState.REJECTED,
            explain("the deadline has passed", assessments),
            code=RejectionCode.DEADLINE_PASSED,
            reason=f"the job's deadline {job.deadline.isoformat()} has passed",
        )
    if (unreachable := deadline_unreachable(job, now)) is not None:
        return Plan(
            JobState.REJECTED,
            explain("the run cannot end by the deadline", assessments),
            code=RejectionCode.DEADLINE_UNREACHABLE,
            reason=unreachable,
        )
    if not assessments:
        reason = "waiting for capacity: no AI factory has offered capacity yet"
        return Plan(JobState.QUEUED, explain(reason, assessments), reason=reason)
    if ranked:
        chosen = ranked[0]
        summary = (
            f"placed on {chosen.site_id} ({chosen.pool_id}, {chosen.accelerator_model}) at "
            f"{chosen.price_krw_per_gpu_hour:,} KRW/GPU-h: the cheapest of {len(ranked)} allowed sites "
            f"with capacity, out of {len(assessments)} considered"
        )
        return Plan(JobState.PLACED, explain(summary, assessments), chosen=chosen)
    if not allowed_sites:
        rules = sorted({v.rule for s in assessments for v in s.violations})
        reason = f"no site is allowed by policy ({len(assessments)} considered; rules: {', '.join(rules)})"
        return Plan(
            JobState.REJECTED, explain(reason, assessments), code=RejectionCode.NO_ALLOWED_SITE, reason=reason
        )
    allowed_ids = {s.site_id for s in allowed_sites}
    waiting_for = [p for p in could_fit_later if p.site_id in allowed_ids]
    if waiting_for:
        pool = sorted(waiting_for, key=rank)[0]
        reason = (
            f"waiting for capacity: {len(allowed_sites)} allowed sites, none with {job.gpu_count} free GPUs "
            f"now; first choice when free: {pool.pool_id}"
        )
        return Plan(JobState.QUEUED, explain(reason, assessments), reason=reason)
    details = "; ".join(f"{s.site_id}: {', '.join(s.capacity_reasons)}" for s in allowed_sites[:3])
    more = f"; and {len(allowed_sites) - 3} more" if len(allowed_sites) > 3 else ""
    reason = (
        f"none of the {len(allowed_sites)} sites the policy allows could ever run this job ({details}{more})"
    )
    return Plan(JobState.REJECTED, explain(reason, assessments), code=RejectionCode.NEVER_FITS, reason=reason)


def deadline_unreachable(job: JobRequest, now: datetime) -> str | None:
    """Why a run started now could not end by the job's deadline, or None. A queued job is asked again at
    each re-plan: it is rejected once its wait leaves too little time, not placed to miss its deadline."""
    needed = timedelta(hours=job.expected_hours)
    left = job.deadline - now
    if left >= needed:
        return None
    return (
        f"the run needs {job.expected_hours:g} h but the deadline {job.deadline.isoformat()} is "
        f"{left.total_seconds() / 3600:.2f} h away: it cannot end in time"
    )


# The most field errors one refusal lists: an envelope wrong everywhere is not answered at unbounded length.
MAX_FIELD_ERRORS = 20


def field_errors(error: ValidationError) -> list[FieldError]:
    """Each member of an envelope that is not valid, and why, for the tenant who sent it (not its value:
    a refusal repeats nothing the sender did not already see)."""
    return [
        FieldError(location=".".join(map(str, detail["loc"])) or "(envelope)", message=detail["msg"][:500])
        for detail in error.errors(include_url=False, include_input=False)[:MAX_FIELD_ERRORS]
    ]


def answered_job(tenant_id: str, topic: str, data: dict[str, Any]) -> tuple[uuid.UUID, str]:
    """The job id and client request id a refusal of a tenant's envelope names, from whatever of its data
    is usable: a cancel's job id; a request's job id derived from its client_request_id (under the tenant
    whose key signed it). With neither, an id derived from the data, which matches no job."""
    client_request_id = data.get("client_request_id")
    if not (isinstance(client_request_id, str) and 0 < len(client_request_id) <= 128):
        client_request_id = ""
    if portability_problem(client_request_id) is not None:
        client_request_id = ""
    if topic == "jobs.cancel" and (job_id := as_uuid(data.get("job_id"))) is not None:
        return job_id, ""
    if client_request_id:
        return job_id_for(tenant_id, client_request_id), client_request_id
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return job_id_for(tenant_id, f"refused/{digest}"), ""


def as_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def budget_refusal(budget: Budget, committed_krw: int, job: JobRequest, pool: PoolState) -> str | None:
    """Why a run of the job at this pool does not fit in what is left of the budget after the tenant's
    other commitments (runs billed, and estimates of runs not billed yet), or None: a run whose estimate
    is exactly what is left fits."""
    left = budget.amount_krw - committed_krw
    estimate = estimate_krw(job.gpu_count, job.expected_hours, pool.price_krw_per_gpu_hour)
    if estimate <= left:
        return None
    return (
        f"the run's estimated {estimate:,} KRW ({job.gpu_count} GPUs for {job.expected_hours:g} h at "
        f"{pool.price_krw_per_gpu_hour:,} KRW/GPU-h on {pool.site_id}) exceeds the {max(left, 0):,} KRW left "
        f"of the tenant's {budget.kind.replace('_', ' ')} budget of {budget.amount_krw:,} KRW"
    )


def unknown_job_reason(job_id: str) -> str:
    return (
        f"no request for job {job_id} has arrived, so nothing was cancelled now. The cancel is kept: if the "
        "request is still on its way, it is cancelled on arrival (jobs.cancelled, stage before_request). "
        f"A job id is uuid5({JOB_ID_NAMESPACE}, '<tenant_id>/<client_request_id>')"
    )


def not_cancellable_reason(state: str) -> str:
    if state == JobState.CANCELLING:
        return "the job is already being cancelled"
    return f"the job is {state}: nothing is left to cancel"


def conflicting_resubmission_reason(
    client_request_id: str, first: dict[str, Any], again: dict[str, Any], state: str
) -> str:
    differing = sorted(name for name in {*first, *again} if first.get(name) != again.get(name))
    return (
        f"client_request_id {client_request_id!r} was first sent with other content (differing: "
        f"{', '.join(differing)}); the job keeps its first request and its state ({state}): send a new "
        "request under a new client_request_id"
    )
