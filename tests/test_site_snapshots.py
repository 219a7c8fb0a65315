"""Decisions refer to the sites they judged and to the job by digest: each site's document goes out on
market.sites the first time a decision refers to it, the job is its signed request on jobs.requested,
governance keeps both under their digests, and the audit log's what-if and re-checks read each decision's
input back whole."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from contracts.events import CapacityOfferedEvent, PolicyDecisionEvent, SiteSnapshotEvent
from services.governance import handlers as governance
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.governance.storage import DecisionLogEntry, decision_input
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import load_market
from services.shared.batch import PoisonMessage
from services.shared.db import unit_of_work
from services.shared.domain.signing import canonical_json
from services.shared.domain.verdict_cache import site_digest
from tests.conftest import KEYRING, TEST_KEYS, request_event
from tests.storage_support import CATALOGUE, make_engine, offer_all, outbox, placement_context


def logged(engine: Engine, events: list[Any]) -> None:
    """Feed placement's outbox rows of decisions and snapshots to governance, in the order given."""
    for event in events:
        with unit_of_work(engine) as session:
            if isinstance(event, SiteSnapshotEvent):
                governance.on_site_snapshot(session, event)
            else:
                governance.on_policy_decision(session, event)


def test_a_decision_refers_to_each_site_snapshot_published_once(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    requests = [request_event("hanbit-ai") for _ in range(2)]
    for request in requests:  # two transactions: the second publishes no snapshot again
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, request)
    snapshots = [
        SiteSnapshotEvent.model_validate_json(r.payload).data for r in outbox(engine, "market.sites")
    ]
    decisions = [
        PolicyDecisionEvent.model_validate_json(r.payload).data for r in outbox(engine, "policy.decisions")
    ]
    assert sorted(s.site_id for s in snapshots) == sorted(CATALOGUE.site_ids)
    assert all(site_digest(s.document) == s.site_sha256 for s in snapshots)
    by_site = {s.site_id: s.site_sha256 for s in snapshots}
    for decision, request in zip(decisions, requests, strict=True):
        assert decision.site_sha256 == by_site and decision.input is not None
        assert "sites" not in decision.input and "job" not in decision.input
        job = request.data.policy_document()
        assert decision.job_sha256 == hashlib.sha256(canonical_json(job)).hexdigest()
        assert (
            decision.input_sha256
            == hashlib.sha256(canonical_json({**decision.input, "job": job, "sites": by_site})).hexdigest()
        )
    # A site offered anew with other attributes is a new document: its snapshot goes out, the others do not.
    changed = next(o for o in CATALOGUE.offers if o.site.site_id == "nacc-haenam")
    changed = changed.model_copy(update={"site": changed.site.model_copy(update={"internet_facing": True})})
    with unit_of_work(engine) as session:
        placement.on_capacity_offered(
            ctx,
            session,
            TEST_KEYS.factory.sign(
                CapacityOfferedEvent.create(source="factory/x", subject="nacc-haenam", data=changed)
            ),
        )
        placement.on_job_requested(ctx, session, request_event("hanbit-ai"))
    later = [SiteSnapshotEvent.model_validate_json(r.payload).data for r in outbox(engine, "market.sites")]
    assert [s.site_id for s in later[len(snapshots) :]] == ["nacc-haenam"]


def test_governance_reads_back_the_input_as_evaluated_and_refuses_forged_documents(
    database_url: tuple[str, str],
) -> None:
    decided = make_engine(database_url, "placement", PLACEMENT_TABLES)
    log = make_engine(database_url, "governance", GOVERNANCE_TABLES)
    ctx = placement_context()
    offer_all(decided, ctx)
    request = request_event("mois", csap_grade="medium", accelerator_model="B200")
    with unit_of_work(decided) as session:
        placement.on_job_requested(ctx, session, request)
        market = load_market(session)
    decisions = [
        PolicyDecisionEvent.model_validate_json(r.payload) for r in outbox(decided, "policy.decisions")
    ]
    snapshots = [SiteSnapshotEvent.model_validate_json(r.payload) for r in outbox(decided, "market.sites")]
    forged = snapshots[0].model_copy(
        update={
            "data": snapshots[0].data.model_copy(
                update={"document": {**snapshots[0].data.document, "verified": True, "x": 1}}
            )
        }
    )
    with pytest.raises(PoisonMessage, match="does not hash"), unit_of_work(log) as session:
        governance.on_site_snapshot(session, forged)
    # The decision arrives before its snapshots (they travel on another topic): its input is not known yet.
    logged(log, decisions)
    with Session(log) as session:
        content = session.get(DecisionLogEntry, 1).content["decision"]  # type: ignore[union-attr]
        assert decision_input(session, content) is None
    logged(log, snapshots)
    # The job's request, unsigned or signed by another tenant's key, is kept by nobody.
    unsigned = request.model_copy(update={"signature": None})
    signed_by_another = TEST_KEYS.tenants["hanbit-ai"].sign(unsigned)
    for forged_request in (unsigned, signed_by_another):
        with unit_of_work(log) as session:
            governance.on_job_requested(KEYRING, session, forged_request)
        with Session(log) as session:
            assert decision_input(session, content) is None
    with unit_of_work(log) as session:
        governance.on_job_requested(KEYRING, session, request)
        governance.on_job_requested(KEYRING, session, request)  # a redelivery changes nothing
    with Session(log) as session:
        evaluated = decision_input(session, content)
    record = decisions[0].data
    assert evaluated == {
        **(record.input or {}),
        "job": request.data.policy_document(),
        "sites": market.document,
    }
    # The input read back decides as the recorded decision did.
    verdicts = ctx.policy.decide(evaluated)
    assert {v.site_id for v in record.sites if v.allowed} == {s for s, v in verdicts.items() if v["allowed"]}
