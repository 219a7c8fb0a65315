"""Governance's transaction scripts: the hash-chained decision log, published revisions, and the re-check
of running jobs when a new revision is published. What is read back (the log, what-if replays) is in
`queries.py`."""

from __future__ import annotations

import hashlib
import uuid

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
    JobRequestedEvent,
    PolicyDecisionEvent,
    PolicyNonCompliance,
    PolicyNonComplianceEvent,
    PolicyPublishedEvent,
    RuleViolation,
    SiteSnapshotEvent,
)
from services.governance.decision_log import GENESIS_HASH, chain_hash
from services.governance.queries import latest_decided
from services.governance.storage import (
    CancelledJob,
    DecisionFinding,
    DecisionLogEntry,
    DecisionOutcome,
    FinishedRun,
    JobDocumentRow,
    PolicyRevisionRow,
    SiteSnapshotRow,
    decision_input,
    lock_head,
)
from services.governance.what_if import Decided
from services.shared.batch import PoisonMessage, Record
from services.shared.db import insert_ignoring_duplicates, table_of
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.domain.signing import Keyring, KeyRole, canonical_json
from services.shared.domain.verdict_cache import site_digest
from services.shared.inbox import claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox

CONSUMER = "governance"
SOURCE = "service/governance"
DECIDED_BY_TOPIC = {f"jobs.{decided.value}": decided for decided in Decided}


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
            outcome=DECIDED_BY_TOPIC[event.type],
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
        if outcome.outcome != Decided.PLACED or outcome.finished or outcome.site_id is None:
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


def on_job_requested(keyring: Keyring, session: Session, event: JobRequestedEvent) -> None:
    """Keep the job of a request its tenant signed, as the policy reads it, under its digest: decisions
    name it by that digest instead of copying it. Placement refuses what its tenant did not sign; so does
    this, which keeps nothing of it."""
    request = event.data
    if keyring.refusal(event, KeyRole.TENANT, request.tenant_id) is not None:
        return
    document = request.policy_document()
    insert_ignoring_duplicates(
        session,
        table_of(JobDocumentRow),
        {
            "job_sha256": hashlib.sha256(canonical_json(document)).hexdigest(),
            "job_id": str(request.job_id),
            "document": document,
        },
    )


def left_to_placement(session: Session, record: Record, error: BaseException) -> bool:
    """A request that is not a valid event is placement's to answer or dead-letter: governance keeps nothing
    of it, and sends no second dead letter."""
    return True


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
