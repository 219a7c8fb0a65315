"""Placement's tables and the two capacity operations that must be atomic: reserve and release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Table, bindparam, insert, update
from sqlmodel import Field, Session, SQLModel, col, func, select

from contracts.events import CapacityOffered, PolicyDecisionRecord, SiteAttributes
from contracts.limits import MAX_POOLS_PER_SITE, MAX_SITES
from services.placement.logic import JobState, PoolState, forbidden_transitions, site_of_run, sites_document
from services.shared.arrivals import ARRIVAL_TABLES
from services.shared.db import (
    as_utc,
    empty_json_list,
    insert_ignoring_duplicates,
    table_of,
    upsert_insert,
    utc_now,
)
from services.shared.domain.money import period_of
from services.shared.domain.verdict_cache import site_digest


class SiteRow(SQLModel, table=True):
    __tablename__ = "sites"

    site_id: str = Field(primary_key=True, max_length=64)
    attributes: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    offered_at: datetime = Field(default_factory=utc_now)
    # The listed auditor whose signature over these attributes verified; None if nobody vouched for them.
    verified_by: str | None = None


class PoolRow(SQLModel, table=True):
    __tablename__ = "pools"

    pool_id: str = Field(primary_key=True, max_length=64)
    site_id: str = Field(index=True, max_length=64)
    accelerator_model: str
    generation: int
    accelerator_origin: str
    total_gpus: int
    reserved_gpus: int = 0
    price_krw_per_gpu_hour: int
    power_kw_per_gpu: float
    pue: float
    status: str = "available"
    region: str = ""
    price_krw_per_million_input_tokens: int | None = None
    price_krw_per_million_output_tokens: int | None = None


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"

    job_id: str = Field(primary_key=True, max_length=36)
    tenant_id: str = Field(index=True, max_length=64)
    client_request_id: str = Field(max_length=128)
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # requested, queued, placed, running, cancelling, completed, failed, cancelled, rejected
    state: str = Field(index=True, max_length=20)
    site_id: str | None = None
    pool_id: str | None = None
    gpu_count: int
    # Queue order: priority class (0 = urgent ... 3 = low) first, then arrival.
    priority_rank: int = 2
    # Budget: the current run's estimated charge until it is billed, and what its runs were billed.
    estimate_krw: int = Field(default=0, sa_type=BigInteger)
    billed_krw: int = Field(default=0, sa_type=BigInteger)
    # The run being placed or running; a failed run moves the job to the next attempt elsewhere.
    attempt: int = 1
    failed_sites: list[str] = Field(default_factory=empty_json_list, sa_column=Column(JSON, nullable=False))
    # While queued: the sites its last decision allowed (empty: not decided yet, e.g. the engine failed).
    allowed_sites: list[str] = Field(default_factory=empty_json_list, sa_column=Column(JSON, nullable=False))
    price_krw_per_gpu_hour: int | None = None
    decision_id: str | None = None
    policy_revision: str | None = None
    reason: str = ""
    # Arrival time orders the queue (job id breaks ties).
    requested_at: datetime = Field(default_factory=utc_now, index=True)
    updated_at: datetime = Field(default_factory=utc_now)


class DecisionRow(SQLModel, table=True):
    """Every policy decision placement made, kept with the placement it justified (invariant 3)."""

    __tablename__ = "policy_decisions"

    decision_id: str = Field(primary_key=True, max_length=36)
    job_id: str = Field(index=True, max_length=36)
    tenant_id: str = Field(max_length=64)
    policy_revision: str = Field(max_length=64)
    engine: str
    input_sha256: str
    duration_us: int
    result: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    decided_at: datetime = Field(default_factory=utc_now)


class SiteSnapshotRow(SQLModel, table=True):
    """A site document a decision judged, published on market.sites once (the decision refers to it)."""

    __tablename__ = "published_site_snapshots"

    site_sha256: str = Field(primary_key=True, max_length=64)
    site_id: str = Field(max_length=64)
    recorded_at: datetime = Field(default_factory=utc_now)


POOL_STATE_FIELDS = list(PoolState.__dataclass_fields__)


class DecisionSequenceRow(SQLModel, table=True):
    """The last sequence number each placement worker gave a decision: numbered in the decision's own
    transaction, so a decision rolled back takes no number, and governance can tell a gap from a pause."""

    __tablename__ = "decision_sequences"

    worker_id: str = Field(primary_key=True, max_length=100)
    last_seq: int = Field(default=0, sa_type=BigInteger)


class TenantEnvelopeRow(SQLModel, table=True):
    """The digest of each tenant envelope placement took, by its (source, id): a second envelope under the
    same id is a redelivery when its content is the same, and is refused when it is not."""

    __tablename__ = "tenant_envelopes"

    source: str = Field(primary_key=True, max_length=200)
    event_id: str = Field(primary_key=True, max_length=64)
    content_sha256: str = Field(max_length=64)


class CommitmentRow(SQLModel, table=True):
    """A tenant's commitments per billing period of its requests: what its runs were billed plus the
    estimates of runs not billed yet. A running total, so a budget check reads rows, not the job history."""

    __tablename__ = "tenant_commitments"

    tenant_id: str = Field(primary_key=True, max_length=64)
    period: str = Field(primary_key=True, max_length=7)  # YYYY-MM, months in KST
    committed_krw: int = Field(default=0, sa_type=BigInteger)


TABLES: list[Table] = [
    table_of(SiteRow),
    table_of(PoolRow),
    table_of(JobRow),
    table_of(DecisionRow),
    table_of(SiteSnapshotRow),
    table_of(CommitmentRow),
    table_of(DecisionSequenceRow),
    table_of(TenantEnvelopeRow),
    *ARRIVAL_TABLES,
]


def upsert_offer(session: Session, offer: CapacityOffered) -> None:
    """Record a site's attributes and pools; reservations already held are kept."""
    session.info.pop(MARKET_KEY, None)
    site = session.get(SiteRow, offer.site.site_id)
    attributes = offer.site.model_dump(mode="json")
    verified_by = offer.attestation.auditor_key_id if offer.attestation else None
    if site is None:
        session.add(SiteRow(site_id=offer.site.site_id, attributes=attributes, verified_by=verified_by))
    else:
        site.attributes = attributes
        site.verified_by = verified_by
        site.offered_at = utc_now()
    for pool in offer.pools:
        row = session.get(PoolRow, pool.pool_id)
        if row is None:
            row = PoolRow(
                pool_id=pool.pool_id,
                site_id=offer.site.site_id,
                accelerator_model="",
                generation=0,
                accelerator_origin="",
                total_gpus=0,
                price_krw_per_gpu_hour=0,
                power_kw_per_gpu=0,
                pue=1,
            )
            session.add(row)
        row.site_id = offer.site.site_id
        row.accelerator_model = pool.accelerator_model
        row.generation = pool.generation
        row.accelerator_origin = pool.accelerator_origin
        row.total_gpus = pool.gpu_count
        row.price_krw_per_gpu_hour = pool.price_krw_per_gpu_hour
        row.power_kw_per_gpu = pool.power_kw_per_gpu
        row.pue = pool.pue
        row.price_krw_per_million_input_tokens = pool.price_krw_per_million_input_tokens
        row.price_krw_per_million_output_tokens = pool.price_krw_per_million_output_tokens
        row.status = "available"
        row.region = offer.site.region


def offer_beyond_bounds(session: Session, offer: CapacityOffered) -> str | None:
    """Why the market cannot take this offer (it would hold more sites, or the site more pools, than the
    bounds allow, or it names another site's pool), or None."""
    site_id = offer.site.site_id
    known_sites = set(session.exec(select(SiteRow.site_id)))
    if site_id not in known_sites and len(known_sites) >= MAX_SITES:
        return f"the market holds {MAX_SITES} sites, its bound: {site_id} is not added until one is withdrawn"
    offered = {pool.pool_id for pool in offer.pools}
    homes = session.execute(select(PoolRow.pool_id, PoolRow.site_id).where(col(PoolRow.pool_id).in_(offered)))
    taken = sorted(f"{row.pool_id} is {row.site_id}'s" for row in homes if row.site_id != site_id)
    if taken:
        return f"the offer names pools of other sites: {', '.join(taken)}"
    kept = set(session.exec(select(PoolRow.pool_id).where(PoolRow.site_id == site_id)))
    if len(kept | offered) > MAX_POOLS_PER_SITE:
        return (
            f"{site_id} would have {len(kept | offered)} pools with those it offered before, over the bound "
            f"of {MAX_POOLS_PER_SITE}"
        )
    return None


MARKET_KEY = "placement.market"


@dataclass(frozen=True)
class Market:
    """The offered sites, as attributes and as the policy input's `sites`: the same for every decision
    until an offer changes them, so a transaction (a batch of events) loads them once."""

    sites: dict[str, SiteAttributes]
    document: dict[str, Any]
    # The listed auditor whose signature over each site's attributes verified (None: nobody vouched).
    verified_by: dict[str, str | None]
    # Each site's part of `document` by digest, which the verdict cache remembers verdicts under.
    site_digests: dict[str, str]


def load_market(session: Session) -> Market:
    market: Market | None = session.info.get(MARKET_KEY)
    if market is None:
        rows = session.execute(select(SiteRow.site_id, SiteRow.attributes, SiteRow.verified_by)).all()
        sites = {row.site_id: SiteAttributes.model_validate(row.attributes) for row in rows}
        verifiers = {row.site_id: row.verified_by for row in rows}
        document = sites_document(sites, load_pools(session), verifiers)
        digests = {site_id: site_digest(site) for site_id, site in document.items()}
        market = Market(sites, document, verifiers, digests)
        session.info[MARKET_KEY] = market
    return market


def load_pools(session: Session) -> list[PoolState]:
    """Every pool with its reservations as of now (read for each decision: reservations change)."""
    return [PoolState(*row) for row in session.execute(_POOL_STATES)]


# The hot statements are built once and take their values as parameters: building one costs more than
# running it.
_POOLS = table_of(PoolRow)
_POOL_STATES = select(*(_POOLS.c[name] for name in POOL_STATE_FIELDS)).order_by(_POOLS.c.pool_id)
_RESERVE = (
    update(_POOLS)
    .where(_POOLS.c.pool_id == bindparam("match_pool_id"))
    .where(_POOLS.c.status == "available")
    .where(_POOLS.c.total_gpus - _POOLS.c.reserved_gpus >= bindparam("gpus"))
    .values(reserved_gpus=_POOLS.c.reserved_gpus + bindparam("gpus"))
)
_RELEASE = (
    update(_POOLS)
    .where(_POOLS.c.pool_id == bindparam("match_pool_id"))
    .values(reserved_gpus=_POOLS.c.reserved_gpus - bindparam("gpus"))
)
_JOBS = table_of(JobRow)
# Its SET clause is whatever columns a call passes.
_TRANSITION = update(_JOBS).where(
    _JOBS.c.job_id == bindparam("match_job_id"),
    _JOBS.c.state.in_(bindparam("from_states", expanding=True)),
)
_TRANSITION_OF_RUN = _TRANSITION.where(_JOBS.c.attempt == bindparam("match_attempt"))


_SNAPSHOTS = table_of(SiteSnapshotRow)
SNAPSHOTS_KEY = "placement.site_snapshots_recorded"


def new_site_snapshots(session: Session, market: Market) -> list[str]:
    """The market's sites whose document no decision referred to before, recorded now as referred to (by
    this transaction: a concurrent worker's is its to publish). Looked up once per transaction (a batch),
    as the market is loaded once."""
    recorded: set[str] | None = session.info.get(SNAPSHOTS_KEY)
    if recorded is None:
        digests = set(market.site_digests.values())
        known = session.execute(select(_SNAPSHOTS.c.site_sha256).where(_SNAPSHOTS.c.site_sha256.in_(digests)))
        recorded = {row.site_sha256 for row in known}
        session.info[SNAPSHOTS_KEY] = recorded
    new = []
    for site_id, digest in market.site_digests.items():
        if digest in recorded:
            continue
        recorded.add(digest)
        row = {"site_sha256": digest, "site_id": site_id, "recorded_at": utc_now()}
        if insert_ignoring_duplicates(session, _SNAPSHOTS, row):
            new.append(site_id)
    return new


def try_reserve(session: Session, pool_id: str, gpus: int) -> bool:
    """Reserve GPUs only if they are free at this instant: one conditional UPDATE, atomic on any database."""
    result = session.execute(_RESERVE, {"match_pool_id": pool_id, "gpus": gpus})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, pool_id: str, gpus: int) -> None:
    session.execute(_RELEASE, {"match_pool_id": pool_id, "gpus": gpus})


def transition(
    session: Session,
    job_id: str,
    from_states: set[JobState],
    to_state: JobState,
    *,
    at_attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move a job between states only from an expected state (and run, if given), so a repeat, a stale
    run's event or a race changes nothing. A move the state machine does not allow is a bug: refused."""
    if forbidden := forbidden_transitions(from_states, to_state):
        raise ValueError(f"job {job_id}: not a transition of the job state machine: {', '.join(forbidden)}")
    parameters = {
        "match_job_id": job_id,
        "from_states": sorted(from_states),
        "state": to_state,
        "updated_at": utc_now(),
        **values,
    }
    if at_attempt is None:
        result = session.execute(_TRANSITION, parameters)
    else:
        result = session.execute(_TRANSITION_OF_RUN, {**parameters, "match_attempt": at_attempt})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


_RUN_FACTS = select(JobRow.tenant_id, JobRow.site_id, JobRow.attempt, JobRow.failed_sites).where(
    col(JobRow.job_id) == bindparam("job_id")
)


def site_of_tenants_run(session: Session, job_id: str, tenant_id: str, attempt: int) -> str | None:
    """Where that run of the tenant's job was placed; None if the job is not the tenant's or the run was
    never placed."""
    row = session.execute(_RUN_FACTS, {"job_id": job_id}).first()
    if row is None or row.tenant_id != tenant_id:
        return None
    return site_of_run(row.site_id, row.attempt, row.failed_sites, attempt)


def jobs_in(session: Session, state: str | None, tenant_id: str | None) -> list[JobRow]:
    query = select(JobRow)
    if state:
        query = query.where(JobRow.state == state)
    if tenant_id:
        query = query.where(JobRow.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(JobRow.state), col(JobRow.requested_at), col(JobRow.job_id))))


def add_commitment(session: Session, job: JobRow, delta_krw: int) -> None:
    """Move the job's tenant's commitments for the period of its request by delta_krw, whenever the job's
    estimate or billed amount changes by that much."""
    if delta_krw == 0:
        return
    session.execute(
        _add_commitment_statement(upsert_insert(session)),
        {
            "tenant_id": job.tenant_id,
            "period": period_of(as_utc(job.requested_at)),
            "committed_krw": delta_krw,
        },
    )


@cache
def _add_commitment_statement(insert: Any) -> Any:
    table = table_of(CommitmentRow)
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.period],
        set_={"committed_krw": table.c.committed_krw + statement.excluded.committed_krw},
    )


def committed_krw(session: Session, tenant_id: str, requested_since: datetime | None) -> int:
    """What a tenant's jobs requested since then (ever, for None) have been billed, plus what their
    unbilled runs are estimated to cost."""
    since = period_of(as_utc(requested_since)) if requested_since is not None else ""
    return int(session.execute(_COMMITTED, {"tenant_id": tenant_id, "since": since}).scalar_one())


_COMMITMENTS = table_of(CommitmentRow)
# Periods are "YYYY-MM" strings: every one sorts after "" (ever).
_COMMITTED = select(func.coalesce(func.sum(_COMMITMENTS.c.committed_krw), 0)).where(
    _COMMITMENTS.c.tenant_id == bindparam("tenant_id"), _COMMITMENTS.c.period >= bindparam("since")
)


def queued_jobs(session: Session, limit: int, untouched_since: datetime | None = None) -> list[JobRow]:
    """Queued jobs in arrival order; with untouched_since, only those not re-planned since then."""
    query = select(JobRow).where(JobRow.state == JobState.QUEUED)
    if untouched_since is not None:
        query = query.where(col(JobRow.updated_at) < untouched_since)
    order = (col(JobRow.priority_rank), col(JobRow.requested_at), col(JobRow.job_id))
    return list(session.exec(query.order_by(*order).limit(limit)))


def insert_job(session: Session, job: JobRow) -> bool:
    """Insert a new job as a plain row (`job` stays a detached snapshot); False if its id is taken."""
    return insert_ignoring_duplicates(session, table_of(JobRow), job.model_dump())


def keep_cancel(session: Session, job_id: str, tenant_id: str, reason: str) -> None:
    """Remember a cancel that came before its job's request: the request, when it comes, finds this row."""
    session.add(
        JobRow(
            job_id=job_id,
            tenant_id=tenant_id,
            client_request_id="",
            request={},
            state=JobState.CANCELLED,
            gpu_count=0,
            reason=reason,
        )
    )


_INSERT_DECISION = insert(table_of(DecisionRow))
_NEXT_SEQ = (
    update(DecisionSequenceRow)
    .where(col(DecisionSequenceRow.worker_id) == bindparam("match_worker_id"))
    .values(last_seq=DecisionSequenceRow.last_seq + 1)
    .returning(col(DecisionSequenceRow.last_seq))
)


def next_decision_seq(session: Session, worker_id: str) -> int:
    """The worker's next decision number, from 1, counted in this transaction."""
    seq = session.execute(_NEXT_SEQ, {"match_worker_id": worker_id}).scalar()
    if seq is None:
        insert_ignoring_duplicates(
            session, table_of(DecisionSequenceRow), {"worker_id": worker_id, "last_seq": 0}
        )
        seq = session.execute(_NEXT_SEQ, {"match_worker_id": worker_id}).scalar_one()
    return int(seq)


def add_decision(session: Session, record: PolicyDecisionRecord) -> None:
    """Placement's own record of a decision (its input is kept on the topic, not here)."""
    session.execute(
        _INSERT_DECISION,
        {
            "decision_id": str(record.decision_id),
            "job_id": str(record.job_id),
            "tenant_id": record.tenant_id,
            "policy_revision": record.policy_revision,
            "engine": record.engine,
            "input_sha256": record.input_sha256,
            "duration_us": record.duration_us,
            "result": record.model_dump(mode="json", exclude={"input"}),
            "decided_at": utc_now(),
        },
    )
