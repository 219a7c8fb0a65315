"""The compliance officer's what-if and diff, on a real decision history: placement decides jobs with the
shipped policies, governance records the decisions and outcomes, then candidate copies are replayed."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from contracts import EVENT_MODELS, tenant_stream
from contracts.events import (
    CapacityOfferedEvent,
    JobKind,
    JobRequest,
    JobRequestedEvent,
    PolicyNonCompliance,
    PolicyNonComplianceEvent,
)
from services.governance import handlers as governance
from services.governance.handlers import find_revision
from services.governance.policy_diff import diff_bundles
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.governance.what_if import WhatIfReport
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.shared.catalogue import load_catalogue
from services.shared.db import create_service_engine, database_url_for, table_of, unit_of_work
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from services.shared.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.settings import REPO_ROOT, Settings
from services.shared.signing import SignatureRefused
from sovereign.policy_commands import load_bundle, policy_diff, policy_what_if
from tests.conftest import KEYRING, TEST_KEYS, completed_at_haenam, published_event, published_revision

SHIPPED = REPO_ROOT / "policies"


def request(tenant: str, name: str, **fields: Any) -> JobRequestedEvent:
    data = JobRequest.model_validate(
        {
            "tenant_id": tenant,
            "client_request_id": uuid.uuid4().hex,
            "name": name,
            "kind": JobKind.INFERENCE,
            "gpu_count": 8,
            "expected_hours": 2,
            "deadline": (datetime.now(UTC) + timedelta(days=60)).isoformat(),
            **fields,
        }
    )
    return TEST_KEYS.tenants[tenant].sign(
        JobRequestedEvent.create(source=f"tenant/{tenant}", subject=tenant, data=data)
    )


JOBS = {
    "cheap": request("hanbit-ai", "cheap batch", kind=JobKind.BATCH, max_price_krw_per_gpu_hour=2000),
    "serving": request("hanbit-ai", "chat serving", max_price_krw_per_gpu_hour=4500),
    "ministry": request(
        "mois",
        "complaint summariser",
        kind=JobKind.FINE_TUNING,
        accelerator_model="B200",
        csap_grade="medium",
    ),
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Decide the jobs with the shipped policies and record everything in governance's database."""
    settings = replace(Settings(), data_dir=tmp_path_factory.mktemp("history"))
    shared = [table_of(OutboxMessage), table_of(ProcessedEvent)]
    decided = create_service_engine(
        database_url_for(settings, "placement"), "placement", [*shared, *PLACEMENT_TABLES]
    )
    log = create_service_engine(
        database_url_for(settings, "governance"), "governance", [*shared, *GOVERNANCE_TABLES]
    )
    ctx = placement.PlacementContext(
        keyring=KEYRING,
        policy=EmbeddedRegoEngine(PolicyBundle.load(SHIPPED)),
        tenants=load_catalogue(REPO_ROOT / "catalogue").tenants,
    )
    with unit_of_work(decided) as session:
        for offer in load_catalogue(REPO_ROOT / "catalogue").offers:
            placement.on_capacity_offered(
                ctx,
                session,
                TEST_KEYS.factory.sign(
                    CapacityOfferedEvent.create(source="factory/x", subject=offer.site.site_id, data=offer)
                ),
            )
        for event in JOBS.values():
            placement.on_job_requested(ctx, session, event)
    record: dict[str, Callable[[Session, Any], None]] = {
        "policy.decisions": governance.on_policy_decision,
        "market.sites": governance.on_site_snapshot,
        "jobs.placed": governance.on_job_outcome,
        "jobs.rejected": governance.on_job_outcome,
        "jobs.queued": governance.on_job_outcome,
    }
    with Session(decided) as session:
        rows = list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))
    for row in rows:
        if row.topic in record:
            with unit_of_work(log) as session:
                record[row.topic](session, EVENT_MODELS[row.topic].model_validate_json(row.payload))
    return settings


def governance_engine(settings: Settings) -> Engine:
    tables = [table_of(OutboxMessage), table_of(ProcessedEvent), *GOVERNANCE_TABLES]
    return create_service_engine(database_url_for(settings, "governance"), "governance", tables)


def candidate(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    copy = tmp_path / "candidate"
    shutil.copytree(SHIPPED, copy)
    data = json.loads((copy / "data.json").read_text())
    change(data)
    (copy / "data.json").write_text(json.dumps(data, indent=2))
    return copy


def replay(settings: Settings, policies: Path) -> WhatIfReport:
    engine = governance_engine(settings)
    with Session(engine) as session:
        return governance.what_if(session, EmbeddedRegoEngine(PolicyBundle.load(policies)))


def job_of(name: str) -> str:
    return str(JOBS[name].data.job_id)


def test_the_shipped_policies_change_nothing(settings: Settings) -> None:
    report = replay(settings, SHIPPED)
    assert report.replayed == 3 and report.changes == []


def test_relaxing_exp01_moves_and_unblocks_jobs(settings: Settings, tmp_path: Path) -> None:
    relaxed = candidate(tmp_path, lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    report = replay(settings, relaxed)
    changes = {change.job_id: change for change in report.changes}
    assert changes[job_of("cheap")].kind == "newly_placeable"
    assert changes[job_of("cheap")].after == "placed on cn-ascend-cloud"
    assert changes[job_of("serving")].kind == "site_changed"
    assert changes[job_of("serving")].before == "placed on nadc-gwangju"
    assert set(report.by_rule()) == {"EXP-01"} and len(report.by_rule()["EXP-01"]) == 2
    assert job_of("ministry") not in changes


def test_a_stricter_rule_is_reported_with_the_jobs_it_would_stop(settings: Settings, tmp_path: Path) -> None:
    stricter = candidate(tmp_path, lambda data: data["country_lists"]["d5"].append("KR"))
    report = replay(settings, stricter)
    [change] = report.changes
    assert change.job_id == job_of("ministry") and change.kind == "no_longer_placed"
    assert change.rules == ("EXP-02",)


def test_what_if_and_diff_commands(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    relaxed = candidate(tmp_path, lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    assert policy_what_if(str(relaxed), settings) == 0
    printed = capsys.readouterr().out
    assert "Replayed the latest decision of 3 jobs" in printed and "2 would change" in printed
    assert "EXP-01: 2 jobs" in printed and "placed on nadc-gwangju -> placed on cn-ascend-cloud" in printed
    assert policy_diff(str(SHIPPED), str(relaxed), settings) == 0
    assert "EXP-01: mode 'deny' -> 'dryrun'" in capsys.readouterr().out
    assert policy_what_if("no-such-revision", settings) == 2


def test_a_published_revision_can_be_named_by_its_id(settings: Settings, tmp_path: Path) -> None:
    bundle = PolicyBundle.load(
        candidate(tmp_path, lambda data: data["rules"]["FIN-03"].update(mode="dryrun"))
    )
    published = published_revision(bundle)
    engine = governance_engine(settings)
    with unit_of_work(engine) as session:
        governance.on_policy_published(KEYRING, session, published_event(published))
    assert load_bundle(bundle.revision[:12], settings).revision == bundle.revision
    assert diff_bundles(PolicyBundle.load(SHIPPED), bundle) == ["FIN-03: mode 'warn' -> 'dryrun'"]


def test_governance_keeps_no_revision_its_officer_did_not_sign(settings: Settings, tmp_path: Path) -> None:
    bundle = PolicyBundle.load(
        candidate(tmp_path, lambda data: data["rules"]["EXP-03"].update(mode="dryrun"))
    )
    engine = governance_engine(settings)
    for forged in (
        published_event(published_revision(bundle), signer=None),
        published_event(published_revision(bundle), signer=TEST_KEYS.tenants["mois"]),
    ):
        with pytest.raises(SignatureRefused), unit_of_work(engine) as session:
            governance.on_policy_published(KEYRING, session, forged)
    with Session(engine) as session:
        assert find_revision(session, bundle.revision) is None


def test_diff_names_logic_and_shared_helper_changes(tmp_path: Path) -> None:
    copy = tmp_path / "p"
    shutil.copytree(SHIPPED, copy)
    sovereignty = copy / "sovereignty" / "sovereignty.rego"
    sovereignty.write_text(sovereignty.read_text().replace('country != "KR"', 'country != "JP"'))
    csap = copy / "csap" / "csap.rego"
    csap.write_text(csap.read_text().replace("((30 * 24)", "((45 * 24)"))
    assert diff_bundles(PolicyBundle.load(SHIPPED), PolicyBundle.load(copy)) == [
        "SOV-01: logic changed",
        "shared logic changed: csap/csap.rego: thirty_days_ns",
    ]


def publish_to_governance(settings: Settings, policies: Path) -> list[PolicyNonCompliance]:
    bundle = PolicyBundle.load(policies)
    published = published_revision(bundle)
    engine = governance_engine(settings)
    with Session(engine) as session:
        before = len(list(session.exec(select(OutboxMessage))))
    with unit_of_work(engine) as session:
        governance.on_policy_published(KEYRING, session, published_event(published))
    with Session(engine) as session:
        rows = list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))[before:]
    findings = [PolicyNonComplianceEvent.model_validate_json(row.payload) for row in rows]
    assert {row.topic for row in rows} <= {"policy.noncompliance"}
    # Each finding also goes to the stream of the tenant whose job it is about.
    assert [row.also_to for row in rows] == [tenant_stream(f.data.tenant_id) for f in findings]
    return [finding.data for finding in findings]


def test_a_new_revision_rechecks_running_jobs(settings: Settings, tmp_path: Path) -> None:
    stricter = candidate(tmp_path, lambda data: data["country_lists"]["d5"].append("KR"))
    [finding] = publish_to_governance(settings, stricter)
    assert finding.job_id == JOBS["ministry"].data.job_id and finding.site_id == "nacc-haenam"
    assert finding.enforcement == "action_required"
    assert [v.rule for v in finding.violations] == ["EXP-02"]
    assert finding.placed_under_revision == PolicyBundle.load(SHIPPED).revision


def test_a_warn_mode_finding_is_only_reported(settings: Settings, tmp_path: Path) -> None:
    def stricter_but_warn(data: dict[str, Any]) -> None:
        data["country_lists"]["d5"].append("KR")
        data["rules"]["EXP-02"]["mode"] = "warn"

    [finding] = publish_to_governance(settings, candidate(tmp_path, stricter_but_warn))
    assert finding.enforcement == "report_only" and finding.violations[0].mode == "warn"


def test_a_finished_job_is_not_rechecked(settings: Settings, tmp_path: Path) -> None:
    engine = governance_engine(settings)
    with unit_of_work(engine) as session:
        governance.on_job_completed(session, completed_at_haenam(JOBS["ministry"].data.job_id, gpu_seconds=1))

    def stricter_again(data: dict[str, Any]) -> None:
        data["country_lists"]["d5"] += ["KR", "ZZ"]

    assert publish_to_governance(settings, candidate(tmp_path, stricter_again)) == []
