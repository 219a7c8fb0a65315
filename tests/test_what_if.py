"""The compliance officer's what-if and diff, on a real decision history: placement decides jobs with the
shipped policies, governance records the decisions and outcomes, then candidate copies are replayed."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, delete, select

from contracts import EVENT_MODELS, tenant_stream
from contracts.events import (
    CapacityOffered,
    CapacityOfferedEvent,
    JobCancelled,
    JobCancelledEvent,
    JobKind,
    JobRequest,
    JobRequestedEvent,
    PolicyNonCompliance,
    PolicyNonComplianceEvent,
)
from services.governance import handlers as governance
from services.governance import queries as governance_queries
from services.governance.officer_actions import (
    ActionRefused,
    load_bundle,
    revision_diff,
    run_revision_tests,
    what_if_report,
)
from services.governance.policy_diff import diff_bundles
from services.governance.queries import find_revision
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.governance.storage import SiteSnapshotRow
from services.governance.what_if import (
    DEPENDS_ON_BUDGET,
    DEPENDS_ON_CAPACITY,
    EVERY_JOB,
    NO_SINGLE_RULE,
    Decided,
    Effect,
    JobChange,
    RecordedDecision,
    Scope,
    SiteFacts,
    WhatIfReport,
)
from services.governance.what_if import replay as what_if_replay
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.shared.db import create_service_engine, database_url_for, table_of, unit_of_work
from services.shared.domain.catalogue import Budget, Tenant, load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.domain.signing import SignatureRefused
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT, Settings
from sovereign.decision_commands import governance_session
from sovereign.policy_commands import policy_diff, policy_what_if
from sovereign.verification.workload import generate
from tests.conftest import KEYRING, TEST_KEYS, completed_at_haenam, published_event, published_revision
from tests.storage_support import placement_context

SHIPPED = REPO_ROOT / "policies"
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")


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


def _stopped_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def history(
    directory: Path,
    requests: Iterable[JobRequestedEvent],
    offers: Sequence[CapacityOffered] = CATALOGUE.offers,
    tenants: dict[str, Tenant] = CATALOGUE.tenants,
    policies: Path = SHIPPED,
) -> Settings:
    """Decide the jobs with the shipped policies (or others), in order, and record everything in
    governance's database, as the running services would."""
    settings = replace(Settings(), data_dir=directory)
    shared = [table_of(OutboxMessage), table_of(ProcessedEvent)]
    decided = create_service_engine(
        database_url_for(settings, "placement"), "placement", [*shared, *PLACEMENT_TABLES]
    )
    log = create_service_engine(
        database_url_for(settings, "governance"), "governance", [*shared, *GOVERNANCE_TABLES]
    )
    ctx = placement_context(tenants=tenants, policy=EmbeddedRegoEngine(PolicyBundle.load(policies)))
    with unit_of_work(decided) as session:
        for offer in offers:
            placement.on_capacity_offered(
                ctx,
                session,
                TEST_KEYS.factory.sign(
                    CapacityOfferedEvent.create(source="factory/x", subject=offer.site.site_id, data=offer)
                ),
            )
    for event in requests:
        # Each request is decided as it arrives: the module's requests were signed at import, and a long
        # suite must not turn them stale.
        ctx.clock = _stopped_at(event.time)
        with unit_of_work(decided) as session:
            placement.on_job_requested(ctx, session, event)
        with unit_of_work(log) as session:
            governance.on_job_requested(KEYRING, session, event)
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


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return history(tmp_path_factory.mktemp("history"), JOBS.values())


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


def replay(settings: Settings, policies: Path, scope: Scope = EVERY_JOB) -> WhatIfReport:
    """What-if against the shipped policies as the current revision."""
    engine = governance_engine(settings)
    with Session(engine) as session:
        return governance_queries.what_if(
            session,
            EmbeddedRegoEngine(PolicyBundle.load(SHIPPED)),
            EmbeddedRegoEngine(PolicyBundle.load(policies)),
            scope,
            frozenset(t for t, tenant in CATALOGUE.tenants.items() if tenant.budget),
        )


def job_of(name: str) -> str:
    return str(JOBS[name].data.job_id)


def test_the_shipped_policies_change_nothing(settings: Settings) -> None:
    report = replay(settings, SHIPPED)
    assert (report.replayed, report.changes, report.limits) == (3, [], [])


def effect(change: JobChange, kind: str) -> Effect:
    [found] = [e for e in change.effects if e.kind == kind]
    return found


def test_relaxing_exp01_moves_and_unblocks_jobs(settings: Settings, tmp_path: Path) -> None:
    relaxed = candidate(tmp_path, lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    report = replay(settings, relaxed)
    changes = {change.job_id: change for change in report.changes}
    cheap, serving = changes[job_of("cheap")], changes[job_of("serving")]
    assert cheap.before.describe() == "rejected (never_fits)"
    assert cheap.after.describe() == "placed on cn-ascend-cloud"
    assert effect(cheap, "newly_placed").rules == ("EXP-01",)
    assert (serving.before.describe(), serving.after.describe()) == (
        "placed on nadc-gwangju",
        "placed on cn-ascend-cloud",
    )
    assert effect(serving, "moved") == Effect("moved", ("cn-ascend-cloud",), ("EXP-01",), True)
    assert effect(serving, "warnings_added").rules == ("EXP-01",)
    assert set(report.by_rule()) == {"EXP-01"}
    assert report.by_rule()["EXP-01"]["moved"] == 1 and report.by_rule()["EXP-01"]["newly_placed"] == 1
    assert job_of("ministry") not in changes
    # Both would be placed where the current revision's EXP-01 forbids.
    assert {c.job_id: c.forbidden_by for c in report.forbidden} == {
        job_of("cheap"): ("EXP-01",),
        job_of("serving"): ("EXP-01",),
    }
    assert all(DEPENDS_ON_CAPACITY in c.depends_on for c in report.forbidden)


def test_a_stricter_rule_is_reported_with_the_jobs_it_would_stop(settings: Settings, tmp_path: Path) -> None:
    stricter = candidate(tmp_path, lambda data: data["country_lists"]["d5"].append("KR"))
    report = replay(settings, stricter)
    [change] = report.changes
    assert change.job_id == job_of("ministry") and change.after.state != "placed"
    assert effect(change, "newly_unplaceable").rules == ("EXP-02",)
    assert effect(change, "newly_unplaceable").single_rule
    assert effect(change, "newly_denied").rules == ("EXP-02",)
    assert report.forbidden == []


def test_what_if_and_diff_commands(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    relaxed = candidate(tmp_path, lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    # Exit 1: the candidate would place jobs where a rule of the current revision forbids.
    assert policy_what_if(str(relaxed), settings, str(SHIPPED)) == 1
    printed = capsys.readouterr().out
    assert "Replayed the latest decision of 3 jobs: 2 would change." in printed
    assert "2 jobs would be placed where a rule of the current revision forbids" in printed
    assert "  EXP-01: newly allowed somewhere 2, moved 1, newly placed 1, warnings added 2" in printed
    assert "placed on nadc-gwangju -> placed on cn-ascend-cloud" in printed
    assert "cn-ascend-cloud: now allowed, -EXP-01 (deny), +EXP-01 (warning)" in printed
    assert policy_what_if(str(relaxed), settings, str(SHIPPED), as_json=True) == 1
    review = json.loads(capsys.readouterr().out)
    assert review["changed"] == 2 and review["newly_placed_where_a_current_rule_forbids"] == 2
    assert review["candidate_revision"] == PolicyBundle.load(relaxed).revision
    stricter = candidate(tmp_path / "stricter", lambda data: data["country_lists"]["d5"].append("KR"))
    assert policy_what_if(str(stricter), settings, str(SHIPPED)) == 0
    assert "No job would be placed where a rule of the current revision forbids." in capsys.readouterr().out
    assert policy_diff(str(SHIPPED), str(relaxed), settings) == 0
    assert "EXP-01: mode 'deny' -> 'dryrun'" in capsys.readouterr().out
    assert policy_what_if("no-such-revision", settings) == 2


def test_scope_by_tenant_rule_and_period(settings: Settings, tmp_path: Path) -> None:
    relaxed = candidate(tmp_path, lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    assert replay(settings, relaxed, Scope(tenants=frozenset({"mois"}))).changes == []
    assert replay(settings, relaxed, Scope(tenants=frozenset({"mois"}))).replayed == 1
    assert len(replay(settings, relaxed, Scope(rules=frozenset({"EXP-01"}))).changes) == 2
    assert replay(settings, relaxed, Scope(rules=frozenset({"CSAP-01"}))).changes == []
    later = datetime.now(UTC) + timedelta(days=1)
    assert replay(settings, relaxed, Scope(since=later)).replayed == 0
    assert len(replay(settings, relaxed, Scope(until=later)).changes) == 2


def test_a_published_revision_can_be_named_by_its_id(settings: Settings, tmp_path: Path) -> None:
    bundle = PolicyBundle.load(
        candidate(tmp_path, lambda data: data["rules"]["FIN-03"].update(mode="dryrun"))
    )
    published = published_revision(bundle)
    engine = governance_engine(settings)
    with unit_of_work(engine) as session:
        governance.on_policy_published(KEYRING, session, published_event(published))
    assert (
        load_bundle(bundle.revision[:12], partial(governance_session, settings)).revision == bundle.revision
    )
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


def test_a_warning_rule_switched_to_deny_reports_the_jobs_it_newly_denies(tmp_path: Path) -> None:
    """FIN-03 warns in the catalogue; a revision setting it to deny blocks, in what-if and on publication."""
    bank = request("hanil-bank", "credit risk model", importance="important")
    settings = history(tmp_path / "history", [bank])
    denying = candidate(tmp_path, lambda data: data["rules"]["FIN-03"].update(mode="deny"))
    report = replay(settings, denying)
    [change] = report.changes
    assert change.job_id == str(bank.data.job_id)
    assert change.before.state == "placed" and change.after.state != "placed"
    assert effect(change, "newly_denied").rules == ("FIN-03",)
    assert effect(change, "newly_unplaceable").rules == ("FIN-03",)
    assert set(report.by_rule()) == {"FIN-03"}
    [finding] = publish_to_governance(settings, denying)
    assert finding.job_id == bank.data.job_id and finding.enforcement == "action_required"
    assert [(v.rule, v.mode) for v in finding.violations] == [("FIN-03", "deny")]


def placed_sites(settings: Settings) -> dict[str, str]:
    """Where placement put each job of a history, by job id."""
    engine = create_service_engine(
        database_url_for(settings, "placement"),
        "placement",
        [table_of(OutboxMessage), table_of(ProcessedEvent), *PLACEMENT_TABLES],
    )
    with Session(engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.topic == "jobs.placed"))
        return {
            str(data["job_id"]): data["site_id"] for data in (json.loads(r.payload)["data"] for r in rows)
        }


def test_an_exemption_that_lapses_before_the_deadline_places_nothing_under_it(tmp_path: Path) -> None:
    """Only Chinese-designed chips are this cheap (EXP-01); an exemption lets the batch run there only if
    it lasts through the job's deadline, 60 days out."""
    today = datetime.now(UTC).date()

    def exempted_until(days: int) -> Path:
        exemption = {
            "tenant": "hanbit-ai",
            "rule": "EXP-01",
            "expires": (today + timedelta(days=days)).isoformat(),
            "approver": "cpo@example.go.kr",
            "reason": "price pilot",
        }
        return candidate(
            tmp_path / f"exempt-{days}", lambda data: data.__setitem__("exemptions", [exemption])
        )

    for days, site in [(30, None), (59, None), (62, "cn-ascend-cloud")]:
        cheap = request("hanbit-ai", "cheap batch", kind=JobKind.BATCH, max_price_krw_per_gpu_hour=2000)
        settings = history(tmp_path / f"history-{days}", [cheap], policies=exempted_until(days))
        assert placed_sites(settings).get(str(cheap.data.job_id)) == site, days


def test_a_finished_job_is_not_rechecked(settings: Settings, tmp_path: Path) -> None:
    engine = governance_engine(settings)
    with unit_of_work(engine) as session:
        governance.on_job_completed(session, completed_at_haenam(JOBS["ministry"].data.job_id, gpu_seconds=1))

    def stricter_again(data: dict[str, Any]) -> None:
        data["country_lists"]["d5"] += ["KR", "ZZ"]

    assert publish_to_governance(settings, candidate(tmp_path, stricter_again)) == []


def signed(requests: Iterable[JobRequest]) -> list[JobRequestedEvent]:
    return [
        TEST_KEYS.tenants[r.tenant_id].sign(
            JobRequestedEvent.create(source=f"tenant/{r.tenant_id}", subject=r.tenant_id, data=r)
        )
        for r in requests
    ]


def identical_in_effect(tmp_path: Path) -> Path:
    """Another revision that decides exactly as the shipped one: a retitled rule, a new comment."""
    copy = candidate(
        tmp_path, lambda data: data["rules"]["SOV-01"].update(title="Sovereign tenants, retitled")
    )
    rego = copy / "csap" / "csap.rego"
    rego.write_text(rego.read_text() + "\n# A comment changes the revision, not a decision.\n")
    assert PolicyBundle.load(copy).revision != PolicyBundle.load(SHIPPED).revision
    return copy


@pytest.fixture(scope="module")
def demo_history(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The demo's workload (48 jobs, its seed), decided in order against the catalogue's market."""
    return history(tmp_path_factory.mktemp("demo"), signed(generate(48, 2027)))


def test_a_revision_identical_in_effect_changes_nothing_over_the_demo_workload(
    demo_history: Settings, tmp_path: Path
) -> None:
    report = replay(demo_history, identical_in_effect(tmp_path))
    # 47: the workload's request from an unregistered tenant is refused before any policy decision.
    assert (report.replayed, report.changes, report.limits) == (47, [], [])


def test_the_per_rule_summary_matches_the_per_job_lines(demo_history: Settings, tmp_path: Path) -> None:
    def several(data: dict[str, Any]) -> None:
        for rule in ("EXP-01", "CSAP-01", "CSAP-02"):
            data["rules"][rule]["mode"] = "dryrun"
        data["country_lists"]["d5"].append("KR")

    report = replay(demo_history, candidate(tmp_path, several)).as_json()
    assert report["changed"] > 3 and len(report["summary"]["by_rule"]) >= 2
    by_rule: dict[str, Counter[str]] = defaultdict(Counter)
    by_tenant: dict[str, Counter[str]] = defaultdict(Counter)
    for job in report["jobs"]:
        for found in job["effects"]:
            for rule in found["rules"] + ([] if found["single_rule"] else [NO_SINGLE_RULE]):
                by_rule[rule][found["kind"]] += 1
            by_tenant[job["tenant_id"]][found["kind"]] += 1
    nonzero = {k: {kind: n for kind, n in v.items() if n} for k, v in report["summary"]["by_rule"].items()}
    assert nonzero == {rule: dict(counts) for rule, counts in by_rule.items()}
    assert {
        k: {kind: n for kind, n in v.items() if n} for k, v in report["summary"]["by_tenant"].items()
    } == {tenant: dict(counts) for tenant, counts in by_tenant.items()}


def test_a_budget_rejected_job_changes_only_if_the_policy_sends_it_elsewhere(tmp_path: Path) -> None:
    hanbit = CATALOGUE.tenants["hanbit-ai"]
    tight = {
        **CATALOGUE.tenants,
        "hanbit-ai": hanbit.model_copy(update={"budget": Budget(kind="prepaid", amount_krw=1000)}),
    }
    settings = history(tmp_path / "h", [JOBS["serving"]], tenants=tight)
    job = job_of("serving")
    with Session(governance_engine(settings)) as session:
        [(_, outcome)] = governance_queries.latest_decided(session)
    assert (outcome.outcome, outcome.code) == ("rejected", "budget_exceeded")
    for untouched in (
        identical_in_effect(tmp_path / "same"),
        candidate(tmp_path / "sov", lambda d: d["rules"]["SOV-01"].update(mode="warn")),
    ):
        report = replay(settings, untouched)
        assert report.replayed == 1 and report.changes == [], untouched
    relaxed = candidate(tmp_path / "exp", lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    [change] = replay(settings, relaxed).changes
    assert change.job_id == job and change.before.describe() == "rejected (budget_exceeded)"
    # cn-ascend-cloud is cheaper than the site the budget refused: whether it passes is not replayed.
    assert change.after.describe() == "placed on cn-ascend-cloud" and DEPENDS_ON_BUDGET in change.depends_on


def test_a_tie_broken_by_energy_replays_to_the_same_site(tmp_path: Path) -> None:
    # naver-gak-chuncheon at nadc-gwangju's price: a tie that energy per GPU-hour breaks (0.48 against
    # 0.56 kWh), against the ids' order. cn-ascend-cloud above the job's maximum price.
    prices = {"naver-gak-chuncheon": 2100, "cn-ascend-cloud": 5000}

    def priced(offer: CapacityOffered) -> CapacityOffered:
        if offer.site.site_id not in prices:
            return offer
        price = prices[offer.site.site_id]
        pools = [pool.model_copy(update={"price_krw_per_gpu_hour": price}) for pool in offer.pools]
        return offer.model_copy(update={"pools": pools})

    settings = history(tmp_path / "h", [JOBS["serving"]], offers=[priced(o) for o in CATALOGUE.offers])
    with Session(governance_engine(settings)) as session:
        [(_, outcome)] = governance_queries.latest_decided(session)
    assert outcome.site_id == "naver-gak-chuncheon"
    report = replay(settings, identical_in_effect(tmp_path / "same"))
    assert (report.replayed, report.changes, report.limits) == (1, [], [])
    # A revision that touches the job at another site leaves it where energy put it.
    relaxed = candidate(tmp_path / "exp", lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    [change] = replay(settings, relaxed).changes
    assert change.before == change.after and change.after.site_id == "naver-gak-chuncheon"
    assert [(e.kind, e.sites) for e in change.effects] == [("newly_allowed", ("cn-ascend-cloud",))]


def test_a_decision_whose_market_snapshot_is_missing_is_named_not_skipped(tmp_path: Path) -> None:
    settings = history(tmp_path / "h", [JOBS["serving"], JOBS["ministry"]])
    engine = governance_engine(settings)
    with unit_of_work(engine) as session:
        session.execute(delete(SiteSnapshotRow).where(col(SiteSnapshotRow.site_id) == "nacc-haenam"))
    report = replay(settings, identical_in_effect(tmp_path / "same"))
    assert report.replayed == 0
    [limit] = report.limits
    assert limit.reason == governance_queries.MISSING_SNAPSHOT
    assert set(limit.job_ids) == {job_of("serving"), job_of("ministry")}


def test_a_site_two_rules_denied_is_allowed_by_no_single_rule() -> None:
    def verdict(allowed: bool, *rules: str) -> dict[str, Any]:
        return {"allowed": allowed, "violations": [{"rule": r} for r in rules], "warnings": []}

    decision = RecordedDecision(
        job_id="j",
        tenant_id="t",
        decided_at=datetime.now(UTC),
        revision="r",
        outcome=Decided.REJECTED,
        code="no_allowed_site",
        site_id=None,
        sites={"a": SiteFacts("a", "now", (100, 0.5, 1, "a", "a-1"))},
    )
    change = what_if_replay(decision, {"a": verdict(False, "R-1", "R-2")}, {"a": verdict(True)})
    assert change is not None and change.after.describe() == "placed on a"
    placed = effect(change, "newly_placed")
    assert placed.rules == ("R-1", "R-2") and not placed.single_rule
    assert placed.attribution() == "(no single rule): R-1 and R-2 together"
    # One of the two rules relaxed: the site stays denied, nothing about the job changes.
    assert what_if_replay(decision, {"a": verdict(False, "R-1", "R-2")}, {"a": verdict(False, "R-2")}) is None


def test_a_change_to_a_cancelled_job_says_the_cancel_stands(tmp_path: Path) -> None:
    settings = history(tmp_path / "h", [JOBS["serving"]])
    cancelled = JobCancelled(
        job_id=JOBS["serving"].data.job_id, tenant_id="hanbit-ai", stage="placed", site_id="nadc-gwangju"
    )
    with unit_of_work(governance_engine(settings)) as session:
        governance.on_job_cancelled(
            session, JobCancelledEvent.create(source="service/placement", subject="hanbit-ai", data=cancelled)
        )
    relaxed = candidate(tmp_path / "exp", lambda data: data["rules"]["EXP-01"].update(mode="dryrun"))
    [change] = replay(settings, relaxed).changes
    assert change.after.describe() == "placed on cn-ascend-cloud"
    assert any(d.startswith("the cancel at ") and d.endswith("which stands") for d in change.depends_on)


def test_the_officer_actions_give_typed_results_or_a_refusal_the_officer_can_read(
    settings: Settings, tmp_path: Path
) -> None:
    """What the command line prints and the console shows: the same results, from officer_actions."""
    sessions = partial(governance_session, settings)
    relaxed = candidate(tmp_path, lambda data: data["rules"]["FIN-03"].update(mode="dryrun"))
    diff = revision_diff(str(SHIPPED), str(relaxed), sessions)
    assert (diff.old, diff.new) == (PolicyBundle.load(SHIPPED).revision, PolicyBundle.load(relaxed).revision)
    assert diff.lines == ["FIN-03: mode 'warn' -> 'dryrun'"]
    report = what_if_report(str(SHIPPED), sessions, SHIPPED, settings.catalogue_dir, str(SHIPPED))
    assert report.changes == [] and report.replayed > 0
    tested = run_revision_tests(SHIPPED, settings.catalogue_dir)
    assert tested.ok and tested.revision == PolicyBundle.load(SHIPPED).revision
    for refused in (
        lambda: revision_diff("no-such-revision", str(SHIPPED), sessions),
        lambda: what_if_report(str(tmp_path / "missing"), sessions, SHIPPED, settings.catalogue_dir),
    ):
        with pytest.raises(ActionRefused, match="neither a policy directory nor one published revision"):
            refused()
