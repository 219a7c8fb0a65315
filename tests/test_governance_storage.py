"""Governance's decision log on a real database, SQLite and PostgreSQL: the hash chain, and outcomes
read out of order."""

from __future__ import annotations

import json
import uuid

from sqlmodel import Session

from contracts.events import PolicyDecisionEvent
from services.governance import handlers as governance
from services.governance import queries as governance_queries
from services.governance.queries import LogVerification
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.governance.storage import DecisionLogEntry, DecisionOutcome
from services.shared.db import unit_of_work
from tests.conftest import completed_at_haenam, placed_at_haenam
from tests.storage_support import (
    decision_event,
    make_engine,
)

# --- governance: the decision log ------------------------------------------------------------------


def test_decision_log_chains_entries_and_detects_tampering(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "governance", GOVERNANCE_TABLES)
    jobs = [uuid.uuid4() for _ in range(5)]
    events = [decision_event(job, tenant="mois" if i % 2 else "nia") for i, job in enumerate(jobs)]
    for event in [*events, events[2]]:  # a redelivery is logged once
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, event)
    with Session(engine) as session:
        assert governance_queries.verify_log(session) == LogVerification(5, None, [])
        by_job = governance_queries.find_decisions(
            session, governance_queries.DecisionQuery(job_id=str(jobs[3]))
        )
        assert [e.decision_id for e in by_job] == [str(events[3].data.decision_id)]
        assert (
            len(governance_queries.find_decisions(session, governance_queries.DecisionQuery(tenant_id="nia")))
            == 3
        )
        assert (
            len(
                governance_queries.find_decisions(
                    session, governance_queries.DecisionQuery(site_id="tokyo", rule="RES-01")
                )
            )
            == 5
        )
        assert (
            governance_queries.find_decisions(session, governance_queries.DecisionQuery(rule="CSAP-01")) == []
        )
        revision = events[0].data.policy_revision[:12]
        assert (
            len(
                governance_queries.find_decisions(
                    session, governance_queries.DecisionQuery(policy_revision=revision)
                )
            )
            == 5
        )
    # An auditor-defeating edit: one stored entry's content changed in place.
    with unit_of_work(engine) as session:
        entry = session.get(DecisionLogEntry, 3)
        assert entry is not None
        altered = json.loads(json.dumps(entry.content))
        altered["decision"]["sites"][1]["allowed"] = True
        entry.content = altered
    with Session(engine) as session:
        verification = governance_queries.verify_log(session)
        broken = verification.broken
        assert (
            verification.entries == 5
            and broken is not None
            and broken.seq == 3
            and "altered" in broken.reason
        )


def test_decision_log_detects_a_removed_entry(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "governance", GOVERNANCE_TABLES)
    for _ in range(3):
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, decision_event(uuid.uuid4()))
    with unit_of_work(engine) as session:
        session.delete(session.get(DecisionLogEntry, 2))
    with Session(engine) as session:
        broken = governance_queries.verify_log(session).broken
        assert broken is not None and broken.seq == 3 and "missing" in broken.reason


def test_a_completion_read_before_its_placement_still_finishes_the_run(database_url: tuple[str, str]) -> None:
    """Governance reads jobs.completed and jobs.placed on separate topics: either may come first (found by
    the fault suite's replay, which feeds them in broker order)."""
    engine = make_engine(database_url, "governance", GOVERNANCE_TABLES)
    placed = placed_at_haenam(uuid.uuid4())
    with unit_of_work(engine) as session:
        governance.on_job_completed(session, completed_at_haenam(placed.data.job_id, gpu_seconds=1))
    with unit_of_work(engine) as session:
        governance.on_job_outcome(session, placed)
    with Session(engine) as session:
        outcome = session.get(DecisionOutcome, str(placed.data.explanation.decision_id))
    assert outcome is not None and outcome.finished


def test_a_decision_missing_from_a_workers_numbers_fails_verification(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "governance", GOVERNANCE_TABLES)

    def numbered(worker_id: str, seq: int) -> PolicyDecisionEvent:
        event = decision_event(uuid.uuid4())
        data = event.data.model_copy(update={"worker_id": worker_id, "worker_seq": seq})
        return event.model_copy(update={"data": data})

    # Worker a's third and sixth to seventh decisions never arrived; b's all did, out of order; c numbered
    # two decisions 1; and one decision from before numbering is not counted.
    arrived = [
        *(numbered("a", seq) for seq in (1, 2, 4, 5, 8)),
        *(numbered("b", seq) for seq in (2, 1, 3)),
        numbered("c", 1),
        numbered("c", 1),
        decision_event(uuid.uuid4()),
    ]
    for event in arrived:
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, event)
    with Session(engine) as session:
        verification = governance_queries.verify_log(session)
    assert verification.broken is None and verification.entries == len(arrived) and not verification.intact
    assert [gap.describe() for gap in verification.gaps] == [
        "worker a lacks its decisions 3, 6-7 (of 1-8)",
        "worker c holds its decisions 1 more than once (of 1-1)",
    ]
    # The missing ones arrive late (another partition): the log is whole.
    for event in (numbered("a", 3), numbered("a", 6), numbered("a", 7)):
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, event)
    with Session(engine) as session:
        assert [gap.worker_id for gap in governance_queries.verify_log(session).gaps] == ["c"]
