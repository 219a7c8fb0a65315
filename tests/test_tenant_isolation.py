"""Invariant 5: a tenant's queries never include another tenant's jobs, decisions or usage. The tests try
what a curious tenant would: another tenant's job id under its own name, SQL wildcards, a prefix, a
different case."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlmodel import Session

from services.governance import handlers as governance
from services.governance import queries as governance_queries
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.governance.storage import DecisionLogEntry
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import jobs_in
from services.shared.db import unit_of_work
from services.shared.settings import Settings
from sovereign.billing_commands import show_usage
from tests.conftest import request_event
from tests.storage_support import decision_event, make_engine, offer_all, placement_context

# What a tenant might type instead of its own id to see more.
PROBES = ["%", "_%", "mois%", "%mois", "MOIS", "mo", "mois ", "' OR '1'='1", ""]


def test_a_tenant_lists_only_its_own_jobs(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer_all(engine, ctx)
    mine = [request_event("mois", csap_grade="medium", accelerator_model="B200") for _ in range(2)]
    theirs = [request_event("hanbit-ai") for _ in range(2)]
    for event in [*mine, *theirs]:
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, event)
    with Session(engine) as session:
        own = jobs_in(session, None, "mois")
        assert {job.job_id for job in own} == {str(e.data.job_id) for e in mine}
        assert all(job.tenant_id == "mois" for job in own)
        for probe in filter(None, PROBES):
            assert jobs_in(session, None, probe) == [], probe


def test_a_tenant_finds_only_its_own_decisions(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "governance", GOVERNANCE_TABLES)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    for event in (decision_event(mine, tenant="mois"), decision_event(theirs, tenant="nia")):
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, event)
    with Session(engine) as session:

        def find(**query: str) -> list[DecisionLogEntry]:
            return governance_queries.find_decisions(session, governance_queries.DecisionQuery(**query))

        assert [e.job_id for e in find(tenant_id="mois")] == [str(mine)]
        # Another tenant's job id asked for under one's own name: nothing.
        assert find(tenant_id="mois", job_id=str(theirs)) == []
        for probe in filter(None, PROBES):
            assert find(tenant_id=probe) == [], probe


def test_usage_for_an_unknown_or_wildcard_tenant_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path)
    for probe in filter(None, PROBES):
        assert show_usage(settings, probe, "2027-03") == 2, probe
    assert "not in the tenant registry" in capsys.readouterr().err
