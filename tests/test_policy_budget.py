"""The decision budget is enforced while the policy evaluates, not after: an evaluation whose time is up
stops within one run of sites, nothing it found is used, and the job waits to be decided again."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, func, select

from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import DecisionRow, JobRow, load_market
from services.shared.db import unit_of_work
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle, PolicyOverBudget
from services.shared.settings import REPO_ROOT
from tests.conftest import request_event
from tests.storage_support import make_engine, offer_all, outbox, placement_context, stepping_timer


class CountingEngine(EmbeddedRegoEngine):
    """The shipped policies, a few sites a run, counting the runs evaluated."""

    SITES_PER_RUN = 4

    def __init__(self) -> None:
        super().__init__(PolicyBundle.load(REPO_ROOT / "policies"))
        self.runs = 0

    def _evaluate_run(self, policy_input: dict[str, Any], sites: list[tuple[str, Any]] | None) -> Any:
        self.runs += 1
        return super()._evaluate_run(policy_input, sites)


def test_an_evaluation_whose_time_is_up_stops_before_its_next_run(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    policy = CountingEngine()
    with Session(engine) as session:
        document = load_market(session).document
    request = request_event("mois").data
    policy_input = {
        "job": request.policy_document(),
        "tenant": {},
        "sites": document,
        "now": "2026-12-07T00:00:00Z",
    }
    whole = policy.decide(policy_input, lambda: False)
    assert policy.runs == -(-len(document) // CountingEngine.SITES_PER_RUN) > 2
    assert whole == policy.decide(policy_input)
    policy.runs = 0
    checks = iter([False, True])
    with pytest.raises(PolicyOverBudget, match="stopped after 2 of 4 runs"):
        policy.decide(policy_input, lambda: next(checks))
    assert policy.runs == 2


def test_a_job_whose_evaluation_is_stopped_waits_with_nothing_recorded(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    # Every look at the clock finds 100 ms gone.
    ctx = placement_context(policy=CountingEngine(), policy_budget_ms=150, timer=stepping_timer(0.1))
    waiting = request_event("mois")
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, waiting)
    [queued] = [row.payload for row in outbox(engine, "jobs.queued")]
    assert b"stopped at its 150 ms budget" in queued and b"will be decided again" in queued
    assert ctx.policy.runs == 2  # type: ignore[attr-defined]
    assert outbox(engine, "jobs.placed") == [] and outbox(engine, "policy.decisions") == []
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(DecisionRow)).one() == 0
        job = session.get(JobRow, str(waiting.data.job_id))
        assert job is not None and job.state == "queued"
