"""Governance's transaction scripts: the hash-chained decision log and its queries, published revisions,
what-if replays, and the re-check of running jobs when a new revision is published."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session, col, select

from contracts.events import (
    JobCancelledEvent,
    JobCompletedEvent,
    JobPlaced,
    JobPlacedEvent,
    JobQueuedEvent,
    JobRejected,
    JobRejectedEvent,
    PolicyDecisionEvent,
    PolicyNonCompliance,
    PolicyNonComplianceEvent,
    PolicyPublishedEvent,
    RuleViolation,
    SiteSnapshotEvent,
)
from services.governance.decision_log import GENESIS_HASH, ChainBreak, chain_hash, verify
from services.governance.storage import (
    CancelledJob,
    DecisionFinding,
    DecisionLogEntry,
    DecisionOutcome,
    FinishedRun,
    PolicyRevisionRow,
    SiteSnapshotRow,
    decision_input,
    entries_in_order,
    lock_head,
)
from services.governance.what_if import (
    EVERY_JOB,
    JobChange,
    Limit,
    Scope,
    WhatIfReport,
    outcome_under,
    recorded_decision,
    replay,
)
from services.shared.batch import PoisonMessage
from services.shared.db import as_utc, insert_ignoring_duplicates, table_of
from services.shared.inbox import claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox
from services.shared.policy import EmbeddedRegoEngine, PolicyBundle, PolicyEngine
from services.shared.signing import Keyring, KeyRole
from services.shared.verdict_cache import site_digest

CONSUMER = "governance"
SOURCE = "service/governance"


def on_job_outcome(session: Session, event: JobPlacedEvent | JobQueuedEvent | JobRejectedEvent) -> None:
    """Remember what placement did with each decision, for what-if replays."""
    if not claim_event(session, CONSUMER, event):
        return
    data = event.data
    explanation = data.explanation
    if explanation is None:
        return  # rejected before any policy decision (unknown tenant, engine failure)
    decision_id = str(explanation.decision_id)
    if session.get(DecisionOutcome, decision_id) is not None:
        return
    site_id = data.site_id if isinstance(data, JobPlaced) else None
    session.add(
        DecisionOutcome(
            decision_id=decision_id,
            job_id=str(data.job_id),
            outcome={"jobs.placed": "placed", "jobs.queued": "queued", "jobs.rejected": "rejected"}[
                event.type
            ],
            site_id=site_id,
            code=data.code.value if isinstance(data, JobRejected) else None,
            explanation=explanation.model_dump(mode="json"),
            finished=site_id is not None
            and session.get(FinishedRun, (str(data.job_id), site_id)) is not None,
        )
    )


def on_job_cancelled(session: Session, event: JobCancelledEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    if session.get(CancelledJob, str(event.data.job_id)) is None:
        session.add(
            CancelledJob(job_id=str(event.data.job_id), cancelled_at=event.time, stage=event.data.stage)
        )


def on_job_completed(session: Session, event: JobCompletedEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    # Only the run at this site: a retry elsewhere may already be placed (the topics are not ordered).
    run = (str(event.data.job_id), event.data.site_id)
    if session.get(FinishedRun, run) is None:
        session.add(FinishedRun(job_id=run[0], site_id=run[1]))
    session.execute(_FINISHED, {"match_job_id": run[0], "match_site_id": run[1]})


_FINISHED = (
    update(DecisionOutcome)
    .where(
        col(DecisionOutcome.job_id) == bindparam("match_job_id"),
        col(DecisionOutcome.site_id) == bindparam("match_site_id"),
    )
    .values(finished=True)
    .execution_options(synchronize_session=False)
)


def on_policy_published(keyring: Keyring, session: Session, event: PolicyPublishedEvent) -> None:
    """Keep the revision, then re-check every job still running under an earlier one. Only a revision its
    publishing officer signed enters the history (as only such a revision is ever activated)."""
    keyring.require(event, KeyRole.OFFICER, event.data.published_by)
    if not claim_event(session, CONSUMER, event):
        return
    published = event.data
    log = get_logger(policy_revision=published.policy_revision)
    if published.bundle is None or session.get(PolicyRevisionRow, published.policy_revision) is not None:
        return
    bundle = PolicyBundle(dict(published.bundle))
    if bundle.revision != published.policy_revision:
        log.error("published_revision_ignored", reason="the bundle does not hash to the published revision")
        return
    session.add(
        PolicyRevisionRow(
            revision=published.policy_revision,
            published_by=published.published_by,
            published_at=event.time,
            tests_passed=published.tests_passed,
            bundle=published.bundle,
        )
    )
    engine = EmbeddedRegoEngine(bundle)
    for entry, outcome in latest_decided(session):
        if outcome.outcome != "placed" or outcome.finished or outcome.site_id is None:
            continue
        if entry.policy_revision == published.policy_revision:
            continue
        evaluated = decision_input(session, entry.content["decision"])
        if evaluated is None:
            log.warning(
                "placed_job_not_rechecked", job_id=entry.job_id, reason="its decision's input is unknown"
            )
            continue
        # Judged as of the publication: certificates and exemptions may have expired since placement.
        verdict = engine.decide({**evaluated, "now": event.time.isoformat()}).get(outcome.site_id, {})
        findings = [RuleViolation(**f) for f in verdict.get("violations", []) + verdict.get("warnings", [])]
        if not findings:
            continue
        noncompliance = PolicyNonCompliance(
            job_id=uuid.UUID(entry.job_id),
            tenant_id=entry.tenant_id,
            site_id=outcome.site_id,
            placed_under_revision=entry.policy_revision,
            new_revision=published.policy_revision,
            violations=findings,
            enforcement="action_required" if any(f.mode == "deny" for f in findings) else "report_only",
        )
        event_out = PolicyNonComplianceEvent.create(
            source=SOURCE, subject=entry.tenant_id, data=noncompliance
        )
        add_to_outbox(session, event_out, entry.job_id)
        log.warning(
            "placed_job_noncompliant",
            job_id=entry.job_id,
            site_id=outcome.site_id,
            enforcement=noncompliance.enforcement,
        )


def on_site_snapshot(session: Session, event: SiteSnapshotEvent) -> None:
    """Keep a site's document under its digest, once; a document that does not hash to it is refused."""
    if not claim_event(session, CONSUMER, event):
        return
    snapshot = event.data
    if site_digest(snapshot.document) != snapshot.site_sha256:
        raise PoisonMessage(f"the snapshot of {snapshot.site_id} does not hash to {snapshot.site_sha256}")
    insert_ignoring_duplicates(
        session,
        table_of(SiteSnapshotRow),
        {"site_sha256": snapshot.site_sha256, "site_id": snapshot.site_id, "document": snapshot.document},
    )


def on_policy_decision(session: Session, event: PolicyDecisionEvent) -> None:
    if not claim_event(session, CONSUMER, event):
        return
    record = event.data
    decision_id = str(record.decision_id)
    if session.exec(_LOGGED, params={"decision_id": decision_id}).first():
        return
    head = lock_head(session, GENESIS_HASH)
    content = {
        "event_id": str(event.id),
        "source": event.source,
        "time": event.time.isoformat(),
        "decision": record.model_dump(mode="json"),
    }
    seq, entry_hash = head.seq + 1, chain_hash(head.entry_hash, content)
    # Core statements, each built once: an append is two inserts, however many findings it has.
    session.execute(
        _INSERT_ENTRY,
        {
            "seq": seq,
            "decision_id": decision_id,
            "job_id": str(record.job_id),
            "tenant_id": record.tenant_id,
            "policy_revision": record.policy_revision,
            "decided_at": event.time,
            "content": content,
            "previous_hash": head.entry_hash,
            "entry_hash": entry_hash,
        },
    )
    findings = [
        {
            "decision_id": decision_id,
            "site_id": verdict.site_id,
            "rule": rule,
            "outcome": outcome,
            "site_allowed": verdict.allowed,
        }
        for verdict in record.sites
        for rule, outcome in sorted(
            {(v.rule, v.mode) for v in [*verdict.violations, *verdict.warnings]}
            | {(e.rule, "exempted") for e in verdict.exempted}
        )
    ]
    if findings:
        session.execute(_INSERT_FINDING, findings)
    head.seq = seq
    head.entry_hash = entry_hash
    get_logger(decision_id=decision_id, job_id=str(record.job_id)).info("decision_logged", seq=seq)


_LOGGED = select(DecisionLogEntry.seq).where(DecisionLogEntry.decision_id == bindparam("decision_id"))
_INSERT_ENTRY = insert(table_of(DecisionLogEntry))
_INSERT_FINDING = insert(table_of(DecisionFinding))


@dataclass(frozen=True)
class DecisionQuery:
    job_id: str | None = None
    tenant_id: str | None = None
    site_id: str | None = None
    rule: str | None = None
    policy_revision: str | None = None


def find_decisions(session: Session, query: DecisionQuery, limit: int = 200) -> list[DecisionLogEntry]:
    statement = select(DecisionLogEntry)
    if query.job_id:
        statement = statement.where(DecisionLogEntry.job_id == query.job_id)
    if query.tenant_id:
        statement = statement.where(DecisionLogEntry.tenant_id == query.tenant_id)
    if query.policy_revision:
        statement = statement.where(col(DecisionLogEntry.policy_revision).startswith(query.policy_revision))
    if query.site_id or query.rule:
        matching = select(DecisionFinding.decision_id)
        if query.site_id:
            matching = matching.where(DecisionFinding.site_id == query.site_id)
        if query.rule:
            matching = matching.where(DecisionFinding.rule == query.rule)
        statement = statement.where(col(DecisionLogEntry.decision_id).in_(matching))
    return list(session.exec(statement.order_by(col(DecisionLogEntry.seq)).limit(limit)))


def verify_log(session: Session) -> tuple[int, ChainBreak | None]:
    entries = entries_in_order(session)
    rows = ((e.seq, e.content, e.previous_hash, e.entry_hash) for e in entries)
    return len(entries), verify(rows)


def latest_decisions(session: Session) -> list[tuple[DecisionLogEntry, DecisionOutcome | None]]:
    """Each job's most recent decision, with its outcome when governance has received it."""
    rows = session.exec(
        select(DecisionLogEntry, DecisionOutcome)
        .join(DecisionOutcome, DecisionLogEntry.decision_id == DecisionOutcome.decision_id, isouter=True)  # type: ignore[arg-type]
        .order_by(col(DecisionLogEntry.seq))
    )
    latest: dict[str, tuple[DecisionLogEntry, DecisionOutcome | None]] = {}
    for entry, outcome in rows:
        latest[entry.job_id] = (entry, outcome)
    return list(latest.values())


def latest_decided(session: Session) -> list[tuple[DecisionLogEntry, DecisionOutcome]]:
    """Each job's most recent decision whose outcome is known."""
    return [(entry, outcome) for entry, outcome in latest_decisions(session) if outcome is not None]


def what_if(
    session: Session,
    current: PolicyEngine,
    candidate: PolicyEngine,
    scope: Scope = EVERY_JOB,
    tenants_with_budgets: frozenset[str] = frozenset(),
) -> WhatIfReport:
    """Replay each job's latest recorded decision (in scope) under the current revision and the candidate:
    the difference is the candidate's effect. A decision that cannot be replayed faithfully is named in the
    report's limits, never skipped silently."""
    changes: list[JobChange] = []
    not_replayed: dict[str, list[str]] = defaultdict(list)
    replayed = 0
    for entry, outcome in latest_decisions(session):
        if not scope.includes(entry.tenant_id, as_utc(entry.decided_at)):
            continue
        if outcome is None:
            not_replayed[UNKNOWN_OUTCOME].append(entry.job_id)
            continue
        decision = entry.content["decision"]
        evaluated = decision_input(session, decision)
        if evaluated is None:
            not_replayed[MISSING_SNAPSHOT].append(entry.job_id)
            continue
        cancelled = session.get(CancelledJob, entry.job_id)
        recorded = recorded_decision(
            entry.job_id,
            entry.tenant_id,
            as_utc(entry.decided_at),
            entry.policy_revision,
            outcome.outcome,
            outcome.code,
            outcome.site_id,
            outcome.explanation,
            as_utc(cancelled.cancelled_at) if cancelled else None,
        )
        if recorded is None:
            not_replayed[NO_CAPACITY_FACTS].append(entry.job_id)
            continue
        if entry.policy_revision == current.revision:
            before = {verdict["site_id"]: verdict for verdict in decision["sites"]}
            # The record must replay to what placement did, or the comparison would not be policy's alone.
            reproduced, _ = outcome_under(recorded, before)
            if (reproduced.state, reproduced.site_id) != (outcome.outcome, outcome.site_id):
                not_replayed[NOT_REPRODUCED].append(entry.job_id)
                continue
        else:
            before = current.decide(evaluated)
            not_replayed[OLDER_REVISION].append(entry.job_id)
        replayed += 1
        change = replay(
            recorded, before, candidate.decide(evaluated), entry.tenant_id in tenants_with_budgets
        )
        if change is not None and scope.keeps(change):
            changes.append(change)
    limits = [Limit(reason, tuple(job_ids)) for reason, job_ids in not_replayed.items()]
    return WhatIfReport(current.revision, candidate.revision, scope, replayed, changes, limits)


# Why a decision was not replayed as it happened.
UNKNOWN_OUTCOME = "its outcome (placed, queued or rejected) has not reached governance: not replayed"
MISSING_SNAPSHOT = "a site snapshot its input refers to never reached governance: not replayed"
NO_CAPACITY_FACTS = (
    "recorded before decisions kept each site's capacity class and ranking inputs (jobs.placed 1.5): "
    "not replayed"
)
NOT_REPRODUCED = "its recorded verdicts do not replay to the outcome placement recorded: not replayed"
OLDER_REVISION = (
    "decided under an earlier revision: replayed, with the current revision's verdicts as the baseline "
    "(not what happened then)"
)


def latest_revision(session: Session) -> PolicyRevisionRow | None:
    """The revision published last: the one placement decides under."""
    return session.exec(
        select(PolicyRevisionRow).order_by(col(PolicyRevisionRow.published_at).desc())
    ).first()


def find_revision(session: Session, prefix: str) -> PolicyRevisionRow | None:
    matches = list(
        session.exec(select(PolicyRevisionRow).where(col(PolicyRevisionRow.revision).startswith(prefix)))
    )
    return matches[0] if len(matches) == 1 else None
