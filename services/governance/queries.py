"""Governance's read side: the decision log searched and verified, the latest decisions with their
outcomes, what-if replays of them under a candidate revision, and published revisions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlmodel import Session, col, select

from services.governance.decision_log import ChainBreak, SequenceGap, sequence_gaps, verify
from services.governance.storage import (
    CancelledJob,
    DecisionFinding,
    DecisionLogEntry,
    DecisionOutcome,
    PolicyRevisionRow,
    decision_input,
    entries_in_order,
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
from services.shared.db import as_utc
from services.shared.domain.policy import PolicyEngine


@dataclass(frozen=True)
class DecisionQuery:
    job_id: str | None = None
    tenant_id: str | None = None
    site_id: str | None = None
    rule: str | None = None
    policy_revision: str | None = None


@dataclass(frozen=True)
class DecisionSummary:
    """A logged decision at a glance: how many of its sites were allowed, and the rules that denied one."""

    sites_allowed: int
    sites: int
    rules: list[str]


def summarize(entry: DecisionLogEntry) -> DecisionSummary:
    sites = entry.content["decision"]["sites"]
    return DecisionSummary(
        sites_allowed=sum(1 for site in sites if site["allowed"]),
        sites=len(sites),
        rules=sorted({v["rule"] for site in sites for v in site["violations"]}),
    )


def find_decisions(
    session: Session, query: DecisionQuery, limit: int = 200, after_seq: int = 0
) -> list[DecisionLogEntry]:
    """The matching entries in log order, from the first after `after_seq` (a page's last, for the next)."""
    statement = select(DecisionLogEntry).where(col(DecisionLogEntry.seq) > after_seq)
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


@dataclass(frozen=True)
class LogVerification:
    entries: int
    broken: ChainBreak | None
    gaps: list[SequenceGap]

    @property
    def intact(self) -> bool:
        return self.broken is None and not self.gaps


def verify_log(session: Session) -> LogVerification:
    """The hash chain checked, and every worker's decision numbers: a decision made but never logged is a
    gap."""
    entries = entries_in_order(session)
    rows = ((e.seq, e.content, e.previous_hash, e.entry_hash) for e in entries)
    return LogVerification(len(entries), verify(rows), sequence_gaps(e.content for e in entries))


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
