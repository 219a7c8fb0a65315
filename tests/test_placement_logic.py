"""Placement's pure decision logic: ranking, capacity reasons, and the placed / queued / rejected outcome."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from contracts.events import JobKind, JobRequest, RejectionCode, RuleViolation, SiteVerdict, job_id_for
from services.placement.logic import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    PoolState,
    answered_job,
    budget_refusal,
    conflicting_resubmission_reason,
    field_errors,
    forbidden_transitions,
    only_waits_for_capacity,
    parse_verdicts,
    plan_placement,
    policy_input,
    site_of_run,
    sites_document,
)
from services.shared.domain.catalogue import Budget, load_catalogue
from services.shared.settings import REPO_ROOT

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
DECISION = uuid.UUID(int=1)


def job(**changes: object) -> JobRequest:
    base = JobRequest(
        tenant_id="hanbit-ai",
        client_request_id="r1",
        name="t",
        kind=JobKind.TRAINING,
        gpu_count=8,
        expected_hours=2,
        deadline=NOW + timedelta(days=30),
    )
    return base.model_copy(update=changes)


def pool(
    pool_id: str,
    site_id: str,
    *,
    price: int = 5000,
    total: int = 64,
    reserved: int = 0,
    model: str = "B200",
    generation: int = 10,
    power: float = 1.0,
    pue: float = 1.2,
    status: str = "available",
    region: str = "",
) -> PoolState:
    return PoolState(
        pool_id=pool_id,
        site_id=site_id,
        accelerator_model=model,
        generation=generation,
        accelerator_origin="US",
        total_gpus=total,
        reserved_gpus=reserved,
        price_krw_per_gpu_hour=price,
        power_kw_per_gpu=power,
        pue=pue,
        status=status,
        region=region,
    )


def allow(*site_ids: str) -> dict[str, SiteVerdict]:
    return {s: SiteVerdict(site_id=s, allowed=True) for s in site_ids}


def deny(site_id: str, rule: str = "RES-01") -> SiteVerdict:
    return SiteVerdict(
        site_id=site_id,
        allowed=False,
        violations=[RuleViolation(rule=rule, message=f"{site_id} denied", mode="deny")],
    )


def plan(request: JobRequest, verdicts: dict[str, SiteVerdict], pools: list[PoolState]):  # type: ignore[no-untyped-def]
    return plan_placement(request, verdicts, pools, DECISION, "rev", NOW)


def test_cheapest_allowed_site_with_capacity_wins() -> None:
    result = plan(
        job(),
        allow("a", "b", "c"),
        [pool("a1", "a", price=7000), pool("b1", "b", price=6000), pool("c1", "c", price=6500)],
    )
    assert result.outcome == "placed"
    assert result.chosen is not None and result.chosen.pool_id == "b1"
    ranks = {s.site_id: s.rank for s in result.explanation.sites}
    assert ranks == {"b": 1, "c": 2, "a": 3}


def test_a_denied_site_is_never_chosen_however_cheap() -> None:
    verdicts = {**allow("a"), "cheap": deny("cheap")}
    result = plan(job(), verdicts, [pool("a1", "a", price=9000), pool("x1", "cheap", price=100)])
    assert result.chosen is not None and result.chosen.site_id == "a"
    cheap = next(s for s in result.explanation.sites if s.site_id == "cheap")
    assert cheap.rank is None and not cheap.policy_allowed and cheap.violations[0].rule == "RES-01"
    # Capacity facts are reported beside the policy verdict, even for a denied site.
    assert cheap.pool_id == "x1"


def test_energy_breaks_a_price_tie_then_ids() -> None:
    result = plan(
        job(),
        allow("a", "b", "c"),
        [pool("a1", "a", pue=1.4), pool("b1", "b", pue=1.1), pool("c1", "c", pue=1.1)],
    )
    assert result.chosen is not None and result.chosen.pool_id == "b1"
    again = plan(
        job(),
        allow("c", "b", "a"),
        list(reversed([pool("a1", "a", pue=1.4), pool("b1", "b", pue=1.1), pool("c1", "c", pue=1.1)])),
    )
    assert again.chosen == result.chosen


def test_energy_outranks_region_preference_which_outranks_ids() -> None:
    """Price, then energy, then the tenant's preferred regions: a preferred region never buys back a
    worse energy figure, and among equals it wins over site ids."""
    request = job(preferred_regions=["jeju"])
    frugal = pool("a1", "a", pue=1.1, region="seoul")
    preferred = pool("b1", "b", pue=1.3, region="jeju")
    assert plan(request, allow("a", "b"), [frugal, preferred]).chosen == frugal
    equal_energy = pool("b1", "b", pue=1.1, region="jeju")
    assert plan(request, allow("a", "b"), [frugal, equal_energy]).chosen == equal_energy


def test_capacity_reasons_name_what_did_not_fit() -> None:
    request = job(accelerator_model="H100", max_price_krw_per_gpu_hour=6000, gpu_count=16)
    pools = [
        pool("wrong-model", "a", model="B200"),
        pool("too-dear", "b", model="H100", price=9000),
        pool("too-small", "c", model="H100", total=8),
        pool("busy", "d", model="H100", reserved=60),
    ]
    result = plan(request, allow("a", "b", "c", "d"), pools)
    reasons = {s.site_id: " ".join(s.capacity_reasons) for s in result.explanation.sites}
    assert "offers B200, not H100" in reasons["a"]
    assert "9,000 KRW/GPU-h, above the maximum 6,000" in reasons["b"]
    assert "8 GPUs in all" in reasons["c"]
    assert "4 of 64 GPUs free" in reasons["d"]
    assert result.outcome == "queued"  # pool "busy" frees up eventually


def test_each_site_records_its_capacity_class_and_the_rankings_inputs() -> None:
    """What-if replays a decision from these, so they must say what placement ranked by."""
    request = job(accelerator_model="H100", preferred_regions=["sejong"])
    pools = [
        replace(pool("fits", "a", model="H100", power=0.7, pue=1.25), region="sejong"),
        pool("busy", "b", model="H100", reserved=60),
        pool("wrong-model", "c", model="B200"),
    ]
    sites = {s.site_id: s for s in plan(request, allow("a", "b", "c", "d"), pools).explanation.sites}
    assert {site_id: s.fit for site_id, s in sites.items()} == {
        "a": "now",
        "b": "later",
        "c": "never",
        "d": "never",
    }
    assert (
        sites["a"].price_krw_per_gpu_hour,
        sites["a"].energy_kwh_per_gpu_hour,
        sites["a"].region_preferred,
    ) == (
        5000,
        0.875,
        True,
    )
    assert (sites["b"].energy_kwh_per_gpu_hour, sites["b"].region_preferred) == (None, None)


def test_rejected_when_no_allowed_site_could_ever_fit() -> None:
    result = plan(job(gpu_count=500), allow("a"), [pool("a1", "a", total=64)])
    assert result.outcome == "rejected" and result.code is RejectionCode.NEVER_FITS


def test_rejected_when_policy_denies_every_site() -> None:
    result = plan(job(), {"a": deny("a"), "b": deny("b", "CSAP-01")}, [pool("a1", "a"), pool("b1", "b")])
    assert result.outcome == "rejected" and result.code is RejectionCode.NO_ALLOWED_SITE
    assert "CSAP-01" in result.reason and "RES-01" in result.reason


def test_a_fitting_denied_site_does_not_keep_a_job_queued() -> None:
    result = plan(job(), {"a": deny("a"), **allow("b")}, [pool("a1", "a"), pool("b1", "b", total=4)])
    assert result.outcome == "rejected" and result.code is RejectionCode.NEVER_FITS


def test_queued_when_capacity_not_offered_yet() -> None:
    result = plan(job(), {}, [])
    assert result.outcome == "queued"


def test_deadline_passed_rejects_even_with_capacity() -> None:
    result = plan(job(deadline=NOW - timedelta(minutes=1)), allow("a"), [pool("a1", "a")])
    assert result.outcome == "rejected" and result.code is RejectionCode.DEADLINE_PASSED


def test_maintenance_and_withdrawn_pools() -> None:
    maintenance = plan(job(), allow("a"), [pool("a1", "a", status="maintenance")])
    assert maintenance.outcome == "queued"
    withdrawn = plan(job(), allow("a"), [pool("a1", "a", status="withdrawn")])
    assert withdrawn.outcome == "rejected"


def test_minimum_generation() -> None:
    result = plan(
        job(min_generation=10),
        allow("a", "b"),
        [pool("old", "a", generation=9, price=1), pool("new", "b", generation=10)],
    )
    assert result.chosen is not None and result.chosen.pool_id == "new"


def test_a_site_missing_from_the_policy_answer_is_denied() -> None:
    verdicts = parse_verdicts({"a": {"allowed": True, "violations": [], "warnings": []}}, {"a", "b"})
    assert verdicts["a"].allowed
    assert not verdicts["b"].allowed and verdicts["b"].violations[0].rule == "ENGINE"


def test_free_gpus_property() -> None:
    assert replace(pool("p", "s", total=10), reserved_gpus=7).free_gpus == 3


def test_an_excluded_region_is_a_capacity_reason_not_a_policy_verdict() -> None:
    seoul = replace(pool("s1", "seoul-site", price=1000), region="seoul")
    busan = replace(pool("b1", "busan-site", price=2000), region="busan")
    result = plan(job(excluded_regions=["seoul"]), allow("seoul-site", "busan-site"), [seoul, busan])
    assert result.chosen is not None and result.chosen.pool_id == "b1"
    excluded = next(s for s in result.explanation.sites if s.site_id == "seoul-site")
    assert excluded.policy_allowed and "a region the job excludes" in excluded.capacity_reasons[0]


def test_regions_are_compared_in_any_case_and_without_the_spaces_around_them() -> None:
    sent = job().model_dump(mode="json") | {"excluded_regions": [" Seoul "], "preferred_regions": ["JEJU"]}
    request = JobRequest.model_validate(sent)
    seoul = replace(pool("s1", "seoul-site", price=1000), region="seoul")
    busan = replace(pool("b1", "busan-site", price=2000), region="busan")
    jeju = replace(pool("j1", "jeju-site", price=2000), region="jeju")
    result = plan(request, allow("seoul-site", "busan-site", "jeju-site"), [seoul, busan, jeju])
    assert result.chosen is not None and result.chosen.pool_id == "j1"


def test_region_preference_ranks_after_price_and_energy() -> None:
    gwangju = replace(pool("g1", "a-gwangju", price=5000), region="gwangju")
    sejong = replace(pool("s1", "b-sejong", price=5000), region="sejong")
    cheaper = replace(pool("c1", "c-cheap", price=4000), region="ulsan")
    preferring = job(preferred_regions=["sejong"])
    assert plan(preferring, allow("a-gwangju", "b-sejong"), [gwangju, sejong]).chosen == sejong
    assert plan(job(), allow("a-gwangju", "b-sejong"), [gwangju, sejong]).chosen == gwangju
    # Preference never beats price.
    assert (
        plan(preferring, allow("a-gwangju", "b-sejong", "c-cheap"), [gwangju, sejong, cheaper]).chosen
        == cheaper
    )


def test_a_queued_job_only_waits_while_every_feasible_pool_is_full() -> None:
    full = pool("a-1", "a", total=16, reserved=16)
    free = pool("b-1", "b", total=16)
    assert only_waits_for_capacity(job(), [full])
    assert not only_waits_for_capacity(job(), [full, free]), "a pool can take it now: decide again"
    # No feasible pool at all (withdrawn, wrong accelerator): deciding again is what rejects it.
    assert not only_waits_for_capacity(job(), [pool("c-1", "c", status="withdrawn")])
    assert not only_waits_for_capacity(job(accelerator_model="H100"), [full])
    assert not only_waits_for_capacity(job(), [])


def test_each_run_of_a_job_is_known_by_the_site_it_was_placed_at() -> None:
    # Runs 1 and 2 failed at haenam and gwangju; run 3 is placed at pangyo.
    failed = ["nacc-haenam", "nadc-gwangju"]
    assert [site_of_run("skt-pangyo", 3, failed, attempt) for attempt in (1, 2, 3)] == [*failed, "skt-pangyo"]
    assert site_of_run("skt-pangyo", 3, failed, 4) is None  # never placed
    assert site_of_run("skt-pangyo", 3, failed, 0) is None
    # Retried after a failure and waiting: the new run has no site yet, the failed one keeps its own.
    assert site_of_run(None, 2, ["nacc-haenam"], 2) is None
    assert site_of_run(None, 2, ["nacc-haenam"], 1) == "nacc-haenam"


def test_the_job_state_machine_reaches_every_state_from_a_request_and_ends_only_in_terminal_ones() -> None:
    reached, frontier = {JobState.REQUESTED}, [JobState.REQUESTED]
    while frontier:
        onward = TRANSITIONS[frontier.pop()] - reached
        reached |= onward
        frontier += onward
    assert reached == set(JobState)
    assert {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED} == TERMINAL_STATES
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert forbidden_transitions({JobState.QUEUED, JobState.COMPLETED}, JobState.PLACED) == [
        "completed -> placed"
    ]


# Which job a refused envelope's answer names (answered_job): the tenant must be able to match it.
def test_a_refused_request_is_answered_under_the_job_its_client_request_id_names() -> None:
    for client_id in ["c", "x" * 128]:
        data = {"client_request_id": client_id, "job_id": str(uuid.uuid4())}  # a request's job_id is not read
        assert answered_job("mois", "jobs.requested", data) == (job_id_for("mois", client_id), client_id)


def test_a_refused_cancel_is_answered_under_its_job_id() -> None:
    job_id = uuid.uuid4()
    data = {"job_id": str(job_id), "client_request_id": "c"}
    assert answered_job("mois", "jobs.cancel", data) == (job_id, "")
    # A job id that is not one: the cancel is answered as a request would be.
    assert answered_job("mois", "jobs.cancel", {"job_id": "nope", "client_request_id": "c"}) == (
        job_id_for("mois", "c"),
        "c",
    )
    assert answered_job("mois", "jobs.cancel", {"job_id": 7, "client_request_id": "c"})[1] == "c"


def test_an_unusable_client_request_id_gives_an_id_that_matches_no_job() -> None:
    for unusable in ["", "x" * 129, 5, None, ["c"], "c\x00"]:
        job_id, client_id = answered_job("mois", "jobs.requested", {"client_request_id": unusable, "n": 1})
        assert client_id == ""
        assert job_id not in {job_id_for("mois", str(unusable)), job_id_for("mois", "")}
    # Derived from the data, whatever its members' order, and from the tenant.
    first = answered_job("mois", "jobs.requested", {"a": 1, "b": [2, 3]})
    assert answered_job("mois", "jobs.requested", {"b": [2, 3], "a": 1}) == first
    assert answered_job("nia", "jobs.requested", {"a": 1, "b": [2, 3]}) != first
    assert answered_job("mois", "jobs.requested", {"a": 2, "b": [2, 3]}) != first


def test_field_errors_name_the_envelope_when_the_error_is_its_own_and_cut_long_messages() -> None:
    long = ValidationError.from_exception_data(
        "envelope", [InitErrorDetails(type=PydanticCustomError("too_long", "x" * 600), loc=(), input=None)]
    )
    [error] = field_errors(long)
    assert (error.location, error.message) == ("(envelope)", "x" * 500)
    many = ValidationError.from_exception_data(
        "envelope",
        [InitErrorDetails(type="missing", loc=("data", f"f{n}"), input=None) for n in range(30)],
    )
    assert [e.location for e in field_errors(many)] == [f"data.f{n}" for n in range(20)]


def test_a_budget_refusal_says_what_the_run_costs_and_what_is_left() -> None:
    cap = Budget(kind="monthly_cap", amount_krw=100_000)
    at = pool("p", "gwangju", price=2_100)
    assert budget_refusal(cap, 66_400, job(gpu_count=8, expected_hours=2), at) is None  # exactly what is left
    refusal = budget_refusal(cap, 70_000, job(gpu_count=8, expected_hours=2), at)
    assert refusal == (
        "the run's estimated 33,600 KRW (8 GPUs for 2 h at 2,100 KRW/GPU-h on gwangju) exceeds the "
        "30,000 KRW left of the tenant's monthly cap budget of 100,000 KRW"
    )
    # Spent past the budget (bills can exceed estimates): nothing is left, never a negative amount.
    overspent = budget_refusal(cap, 120_000, job(gpu_count=8, expected_hours=2), at)
    assert overspent is not None and "exceeds the 0 KRW left" in overspent


def test_a_conflicting_resubmission_names_the_fields_that_differ_and_the_jobs_state() -> None:
    first = {"gpu_count": 8, "name": "a", "kind": "training"}
    again = {"gpu_count": 16, "name": "a", "priority": "urgent"}
    assert conflicting_resubmission_reason("r1", first, again, "queued") == (
        "client_request_id 'r1' was first sent with other content (differing: gpu_count, kind, priority); "
        "the job keeps its first request and its state (queued): send a new request under a new "
        "client_request_id"
    )


# plan_placement's every outcome, in full: what placement decides and what the tenant is told why.
def test_a_site_without_a_verdict_is_never_chosen() -> None:
    """Fail closed: a site with pools that the verdicts do not mention (the engine said nothing) is out."""
    result = plan(job(), allow("a"), [pool("a1", "a", price=9000), pool("x1", "unjudged", price=100)])
    assert result.chosen is not None and result.chosen.site_id == "a"
    verdicts = parse_verdicts({"a": {"allowed": True}}, {"a", "silent"})
    assert not verdicts["silent"].allowed
    assert verdicts["silent"].violations == [
        RuleViolation(rule="ENGINE", message="the policy returned no verdict for this site", mode="deny")
    ]


def test_verdicts_keep_every_finding_in_rule_order() -> None:
    raw = {
        "a": {
            "allowed": False,
            "violations": [
                {"rule": "SOV-01", "message": "m2", "mode": "deny"},
                {"rule": "RES-01", "message": "m1", "mode": "deny"},
            ],
            "warnings": [
                {"rule": "FIN-03", "message": "w2", "mode": "warn"},
                {"rule": "EXP-03", "message": "w1", "mode": "dryrun"},
            ],
            "exempted": [
                {"rule": "EXP-01", "message": "e", "approver": "cpo", "expires": "2027-06-30", "reason": "r"}
            ],
        }
    }
    [verdict] = parse_verdicts(raw, {"a"}).values()
    assert [v.rule for v in verdict.violations] == ["RES-01", "SOV-01"]
    assert [(w.rule, w.mode) for w in verdict.warnings] == [("EXP-03", "dryrun"), ("FIN-03", "warn")]
    assert [(e.rule, e.approver) for e in verdict.exempted] == [("EXP-01", "cpo")]
    assessed = plan(job(), {"a": verdict, **allow("b")}, [pool("a1", "a"), pool("b1", "b")]).explanation.sites
    a = next(s for s in assessed if s.site_id == "a")
    assert (a.violations, a.warnings, a.exempted) == (verdict.violations, verdict.warnings, verdict.exempted)


def test_a_site_fits_by_its_best_pool_that_fits_and_counts_once() -> None:
    pools = [
        pool("a-cheap-small", "a", price=1000, total=4),  # could never take 8 GPUs
        pool("a-full", "a", price=2000, reserved=64),  # could, once GPUs free
        pool("a-ok", "a", price=3000),
        pool("a-ok-too", "a", price=3500),
        pool("b1", "b", price=4000),
    ]
    result = plan(job(), allow("a", "b"), pools)
    assert result.chosen is not None and result.chosen.pool_id == "a-ok"
    assert result.explanation.summary == (
        "placed on a (a-ok, B200) at 3,000 KRW/GPU-h: the cheapest of 2 allowed sites with capacity, "
        "out of 2 considered"
    )
    a = next(s for s in result.explanation.sites if s.site_id == "a")
    assert (a.fit, a.pool_id, a.rank, a.capacity_reasons) == ("now", "a-ok", 1, [])


def test_a_site_offering_nothing_is_assessed_as_never_fitting() -> None:
    result = plan(job(), allow("a", "empty"), [pool("a1", "a")])
    empty = next(s for s in result.explanation.sites if s.site_id == "empty")
    assert (empty.fit, empty.capacity_reasons, empty.pool_id, empty.rank) == (
        "never",
        ["no pool offered"],
        None,
        None,
    )


def test_a_deadline_reached_or_too_close_is_rejected_with_its_reason() -> None:
    at_deadline = plan_placement(job(deadline=NOW), allow("a"), [pool("a1", "a")], DECISION, "rev", NOW)
    assert (at_deadline.outcome, at_deadline.code, at_deadline.reason, at_deadline.explanation.summary) == (
        "rejected",
        RejectionCode.DEADLINE_PASSED,
        f"the job's deadline {NOW.isoformat()} has passed",
        "the deadline has passed",
    )
    close = job(deadline=NOW + timedelta(minutes=90), expected_hours=2)
    too_close = plan_placement(close, allow("a"), [pool("a1", "a")], DECISION, "rev", NOW)
    assert (too_close.outcome, too_close.code, too_close.explanation.summary) == (
        "rejected",
        RejectionCode.DEADLINE_UNREACHABLE,
        "the run cannot end by the deadline",
    )
    assert too_close.reason == (
        f"the run needs 2 h but the deadline {close.deadline.isoformat()} is 1.50 h away: "
        "it cannot end in time"
    )
    just_in_time = job(deadline=NOW + timedelta(hours=2), expected_hours=2)
    on_time = plan_placement(just_in_time, allow("a"), [pool("a1", "a")], DECISION, "rev", NOW)
    assert on_time.outcome is JobState.PLACED


def test_before_any_offer_a_job_waits_saying_so() -> None:
    result = plan(job(), {}, [])
    reason = "waiting for capacity: no AI factory has offered capacity yet"
    assert (result.outcome, result.reason, result.explanation.summary) == ("queued", reason, reason)


def test_no_allowed_site_names_the_rules_that_denied() -> None:
    verdicts = {"a": deny("a", "RES-01"), "b": deny("b", "SOV-01"), "c": deny("c", "RES-01")}
    result = plan(job(), verdicts, [pool("a1", "a"), pool("b1", "b"), pool("c1", "c")])
    reason = "no site is allowed by policy (3 considered; rules: RES-01, SOV-01)"
    assert (result.outcome, result.code, result.reason, result.explanation.summary) == (
        "rejected",
        RejectionCode.NO_ALLOWED_SITE,
        reason,
        reason,
    )


def test_a_job_waiting_for_capacity_names_its_first_choice() -> None:
    pools = [pool("a1", "a", price=6000, reserved=60), pool("b1", "b", price=5000, reserved=60)]
    result = plan(job(), allow("a", "b"), pools)
    reason = "waiting for capacity: 2 allowed sites, none with 8 free GPUs now; first choice when free: b1"
    assert (result.outcome, result.reason, result.explanation.summary) == ("queued", reason, reason)
    assert {s.site_id: s.fit for s in result.explanation.sites} == {"a": "later", "b": "later"}


def test_a_job_no_allowed_site_could_ever_run_lists_three_and_counts_the_rest() -> None:
    sites = ["a", "b", "c", "d", "e"]
    result = plan(job(gpu_count=128), allow(*sites), [pool(f"{s}1", s) for s in sites])
    details = "; ".join(f"{s}: {s}1 has 64 GPUs in all, the job needs 128" for s in sites[:3])
    reason = f"none of the 5 sites the policy allows could ever run this job ({details}; and 2 more)"
    assert (result.outcome, result.code, result.reason) == ("rejected", RejectionCode.NEVER_FITS, reason)
    assert result.explanation.summary == reason
    three = plan(job(gpu_count=128), allow(*sites[:3]), [pool(f"{s}1", s) for s in sites[:3]])
    assert three.reason is not None and three.reason.endswith(f"({details})")


def test_a_price_equal_to_the_jobs_maximum_is_within_it() -> None:
    result = plan(job(max_price_krw_per_gpu_hour=5000), allow("a"), [pool("a1", "a", price=5000)])
    assert result.outcome == "placed"
    dearer = plan(job(max_price_krw_per_gpu_hour=4999), allow("a"), [pool("a1", "a", price=5000)])
    assert dearer.outcome == "rejected"
    assert dearer.explanation.sites[0].capacity_reasons == [
        "a1 costs 5,000 KRW/GPU-h, above the maximum 4,999"
    ]


def test_the_policy_reads_the_job_without_absent_fields_and_each_sites_pools_and_verification() -> None:
    document = policy_input(job(), {"tenant_id": "hanbit-ai"}, {}, NOW)
    assert None not in document["job"].values() and "training_ops" not in document["job"]
    sites = {offer.site.site_id: offer.site for offer in CATALOGUE.offers[:2]}
    first, second = sites
    market = sites_document(sites, [pool("p1", first, generation=9)], {first: "auditor-key"})
    assert market[first]["pools"] == [
        {"pool_id": "p1", "accelerator_model": "B200", "generation": 9, "accelerator_origin": "US"}
    ]
    assert (market[first]["verified"], market[second]["verified"], market[second]["pools"]) == (
        True,
        False,
        [],
    )
    assert None not in market[first].values()
    assert sites_document(sites, [], None)[first]["verified"] is False
