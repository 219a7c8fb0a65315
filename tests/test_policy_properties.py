"""Property tests that try to break fail-closed placement: jobs, tenants and sites generated from the
catalogue's vocabulary, then made worse (evidence removed, nulled, blanked, its case changed) or more
sensitive. Neither may ever allow a site that was denied, the answer may not depend on order, and regorus's
compiled program and its interpreter give the same answer (the OPA server too: tests/test_opa_parity.py).

Seeded and bounded here (100 examples each); SOVEREIGN_PROPERTY_EXAMPLES=5000 runs longer, on random
seeds (hypothesis prints the seed of a failure, and `--hypothesis-seed` replays it).
"""

from __future__ import annotations

import copy
import json
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle, verdicts_by_site
from services.shared.settings import REPO_ROOT
from tests.conftest import Decide, normalised

EXAMPLES = int(os.environ.get("SOVEREIGN_PROPERTY_EXAMPLES", "100"))


def bounded(examples: int) -> settings:
    """Derandomized (a seed per test) at the CI's counts; random seeds on a longer run."""
    return settings(
        max_examples=examples,
        derandomize=EXAMPLES <= 100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


PROPERTY = bounded(EXAMPLES)

BUNDLE = PolicyBundle.load(REPO_ROOT / "policies")
NOW = "2026-11-22T00:00:00+00:00"

# Exemptions in force for some of the generated tenants: removing any one never allows more.
# (They must last through a job's deadline: the first two cover some of the generated deadlines, not all.)
EXEMPTIONS = [
    {"tenant": "t-startup", "rule": "EXP-01", "expires": "2027-06-30", "approver": "cpo", "reason": "pilot"},
    {
        "tenant": "t-finance",
        "rule": "FIN-01",
        "site": "s1",
        "expires": "2027-06-30",
        "approver": "cpo",
        "reason": "r",
    },
    {"tenant": "t-government", "rule": "RES-01", "expires": "2030-12-31", "approver": "cpo", "reason": "r"},
    {"tenant": "t-health", "rule": "HLT-02", "expires": "2028-12-31", "approver": "cpo", "reason": "r"},
]


def bundle_with(
    exemptions: list[dict[str, Any]], modes: dict[str, str] | None = None, early_warning: str = "warn"
) -> PolicyBundle:
    """The shipped bundle with these exemptions in its data instead of its own, and these rules' modes
    and CSAP-05's early-warning mode when given."""
    files = dict(BUNDLE.files)
    data = json.loads(files["data.json"])
    data["exemptions"] = exemptions
    for rule_id, mode in (modes or {}).items():
        data["rules"][rule_id]["mode"] = mode
    data["rules"]["CSAP-05"]["part_modes"] = {"early_warning": early_warning}
    files["data.json"] = json.dumps(data)
    return PolicyBundle(files)


def engine_with(exemptions: list[dict[str, Any]], compile_program: bool = True) -> EmbeddedRegoEngine:
    return EmbeddedRegoEngine(bundle_with(exemptions), compile_program=compile_program)


ENGINE = engine_with(EXEMPTIONS)
INTERPRETER = engine_with(EXEMPTIONS, compile_program=False)
REVERSED_EXEMPTIONS = engine_with(list(reversed(EXEMPTIONS)))
WITHOUT_ONE_EXEMPTION = [engine_with(EXEMPTIONS[:i] + EXEMPTIONS[i + 1 :]) for i in range(len(EXEMPTIONS))]

# In order: a later one never allows more (the last only as a job's deadline moved later).
DEADLINES = [
    "2026-12-01T00:00:00+00:00",
    "2027-02-01T00:00:00Z",
    "2028-06-01T09:00:00+09:00",
    "2031-01-01T00:00:00+09:00",
]
COUNTRIES = ["KR", "KR", "KR", "JP", "US", "SG", "DE", "CN", "HK", "RU", "kr", "Kr", "us"]
GRADES = ["low", "medium", "high"]
CATEGORIES = ["general", "credit", "unique_id", "emr", "genomic", "map", "core_technology", "EMR", "Map"]
SITE_CODES = ["country", "operator_country", "ops_staff_country", "management_country"]


def allowed(engine: EmbeddedRegoEngine, document: dict[str, Any]) -> set[str]:
    return {site_id for site_id, verdict in engine.decide(document).items() if verdict["allowed"]}


certificates = st.one_of(
    st.none(),
    st.builds(
        lambda grade, model, iaas, expires: {
            "grade": grade,
            "service_model": model,
            **({"iaas_grade": iaas} if model != "IaaS" else {}),
            "expires": expires,
        },
        st.sampled_from(GRADES),
        st.sampled_from(["IaaS", "IaaS", "PaaS", "SaaS"]),
        st.sampled_from(GRADES),
        st.sampled_from(["2026-11-30", "2026-12-20", "2027-03-31", "2028-12-31", "2030-12-31"]),
    ),
)

pools = st.lists(
    st.fixed_dictionaries(
        {
            "pool_id": st.sampled_from(["p1", "p2", "p3"]),
            "accelerator_model": st.sampled_from(["B200", "H100", "Ascend 910C", "MI300X"]),
            "generation": st.integers(8, 11),
            "accelerator_origin": st.sampled_from(["US", "US", "KR", "CN", "cn", "HK"]),
        }
    ),
    min_size=1,
    max_size=2,
)

sites = st.fixed_dictionaries(
    {
        **{code: st.sampled_from(COUNTRIES) for code in SITE_CODES},
        "region": st.just("seoul"),
        "operator_type": st.sampled_from(["government", "public", "private", "private"]),
        "internet_facing": st.booleans(),
        "separation": st.sampled_from(["physical", "logical"]),
        "integrated_audit_log": st.booleans(),
        "external_network_blocked": st.booleans(),
        "encryption_at_rest": st.booleans(),
        "holds_reid_key": st.booleans(),
        "closed_environment": st.booleans(),
        "verified": st.booleans(),
        "csap": certificates,
        "pools": pools,
    }
).map(lambda site: {key: value for key, value in site.items() if value is not None})

datasets = st.fixed_dictionaries(
    {
        "name": st.just("d"),
        "n2sf_grade": st.sampled_from(["O", "O", "S", "C"]),
        "categories": st.lists(st.sampled_from(CATEGORIES), max_size=2),
        "personal_info": st.booleans(),
        "pseudonymised": st.booleans(),
        "contains_rrn": st.booleans(),
    }
)

jobs = st.fixed_dictionaries(
    {
        "tenant_id": st.just("t"),
        "client_request_id": st.just("c"),
        "name": st.just("n"),
        "kind": st.sampled_from(["training", "fine_tuning", "inference", "batch"]),
        "gpu_count": st.just(8),
        "expected_hours": st.just(4.0),
        "deadline": st.sampled_from(DEADLINES[:3]),
        "csap_grade": st.sampled_from(["none", "none", *GRADES]),
        "datasets": st.lists(datasets, max_size=3),
        "purpose": st.sampled_from(["service", "statistics", "research", "public_archiving", "commercial"]),
        "consent_obtained": st.booleans(),
        "generative_ai": st.booleans(),
        "internet_egress": st.booleans(),
        "external_ai_apis": st.booleans(),
        "importance": st.sampled_from(["normal", "important"]),
        "training_ops": st.one_of(st.none(), st.sampled_from([1e20, 3e26])),
        "open_weights": st.booleans(),
    }
).map(lambda job: {key: value for key, value in job.items() if value is not None})

tenants = st.builds(
    lambda sector, fields: {"tenant_id": f"t-{sector}", "name": "T", "sector": sector, **fields},
    st.sampled_from(["government", "public", "finance", "health", "enterprise", "startup"]),
    st.fixed_dictionaries(
        {
            "hq_country": st.sampled_from(["KR", "KR", "US", "CN", "kr"]),
            "sovereignty_level": st.sampled_from(["L1", "L1", "L2", "L3"]),
            "transfer_basis": st.lists(
                st.sampled_from(["consent", "contract", "adequacy", "CONSENT"]), max_size=2
            ),
            "rrn_legal_basis": st.booleans(),
            "export_licences": st.lists(st.sampled_from(["map", "core_technology"]), max_size=2),
            "requires_verified_sites": st.booleans(),
        },
        optional={
            "parent_hq_country": st.sampled_from(["KR", "US", "RU"]),
            "sandbox_approval": st.sampled_from(["FSC-2026-1", " ", ""]),
            "review_board_approval": st.sampled_from(["IRB-7", ""]),
        },
    ),
)

requests = st.builds(
    lambda job, tenant, market: {
        "job": {**job, "tenant_id": tenant["tenant_id"]},
        "tenant": tenant,
        "sites": {f"s{index}": site for index, site in enumerate(market)},
        "now": NOW,
    },
    jobs,
    tenants,
    st.lists(sites, min_size=1, max_size=4),
)


def worse_evidence(document: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One piece of evidence removed, nulled or blanked, or one code's case changed."""
    changed = copy.deepcopy(document)
    choice = rng.randrange(4)
    if choice == 0:  # a site attribute removed, nulled or blanked
        site_id = rng.choice(sorted(changed["sites"]))
        site = changed["sites"][site_id]
        attribute = rng.choice(sorted(site))
        how = rng.choice(["removed", "null", "blank"])
        if how == "removed":
            del site[attribute]
        else:
            site[attribute] = None if how == "null" else ""
        return f"{site_id}.{attribute} {how}", changed
    if choice == 1:  # a pool's origin removed or blanked
        site_id = rng.choice(sorted(changed["sites"]))
        pool = rng.choice(changed["sites"][site_id]["pools"])
        pool["accelerator_origin"] = rng.choice([None, "", "  "])
        return f"{site_id} pool origin blanked", changed
    if choice == 2:  # a tenant ground, approval or licence removed, nulled or blanked
        tenant = changed["tenant"]
        key = rng.choice(["transfer_basis", "export_licences", "sandbox_approval", "review_board_approval"])
        value = tenant.get(key)
        if isinstance(value, list) and value:
            value.pop(rng.randrange(len(value)))
        else:
            tenant[key] = rng.choice([None, "", " "])
        return f"tenant {key} taken away", changed
    # a code's case changed: sites' and tenants' country codes, enum values too
    site = changed["sites"][rng.choice(sorted(changed["sites"]))]
    key = rng.choice([*SITE_CODES, "operator_type", "separation"])
    if isinstance(site.get(key), str):
        site[key] = site[key].swapcase()
    return f"case of {key} changed", changed


def more_sensitive(document: dict[str, Any], rng: random.Random, extra: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    job = changed["job"]
    choice = rng.randrange(5)
    if choice == 0 and job["datasets"]:
        dataset = rng.choice(job["datasets"])
        dataset[rng.choice(["personal_info", "pseudonymised", "contains_rrn"])] = True
    elif choice == 1:
        ranks = ["none", *GRADES]
        job["csap_grade"] = ranks[min(3, ranks.index(job["csap_grade"]) + 1)]
    elif choice == 2 and job["datasets"]:
        dataset = rng.choice(job["datasets"])
        dataset["n2sf_grade"] = {"O": "S", "S": "C", "C": "C"}[dataset["n2sf_grade"]]
    elif choice == 3:
        job["datasets"].append(extra)
    else:
        job[rng.choice(["internet_egress", "external_ai_apis"])] = True
    return changed


@PROPERTY
@given(requests, st.randoms(use_true_random=False))
def test_worse_evidence_never_allows_a_denied_site(document: dict[str, Any], rng: random.Random) -> None:
    before = allowed(ENGINE, document)
    change, worse = worse_evidence(document, rng)
    assert allowed(ENGINE, worse) <= before, change


@PROPERTY
@given(requests, st.integers(0, len(EXEMPTIONS) - 1))
def test_removing_an_exemption_never_allows_a_denied_site(document: dict[str, Any], index: int) -> None:
    assert allowed(WITHOUT_ONE_EXEMPTION[index], document) <= allowed(ENGINE, document)


@PROPERTY
@given(requests, st.randoms(use_true_random=False), datasets)
def test_a_more_sensitive_job_never_allows_more_sites(
    document: dict[str, Any], rng: random.Random, extra: dict[str, Any]
) -> None:
    assert allowed(ENGINE, more_sensitive(document, rng, extra)) <= allowed(ENGINE, document)


@PROPERTY
@given(requests, st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_order(document: dict[str, Any], rng: random.Random) -> None:
    shuffled = copy.deepcopy(document)
    items = list(shuffled["sites"].items())
    rng.shuffle(items)
    shuffled["sites"] = dict(items)
    rng.shuffle(shuffled["job"]["datasets"])
    assert ENGINE.decide(shuffled) == ENGINE.decide(document)
    assert REVERSED_EXEMPTIONS.decide(document) == ENGINE.decide(document)


@PROPERTY
@given(requests, st.randoms(use_true_random=False))
def test_compiled_program_and_interpreter_agree(document: dict[str, Any], rng: random.Random) -> None:
    _, worse = worse_evidence(document, rng)
    for each in (document, worse):
        # Straight from the program: a run past its instruction limit (many findings, exemptions in force)
        # would have the interpreter answer for it, and compare the interpreter with itself.
        program = compiled_answer(each)
        if program is not None:
            assert normalised(verdicts_by_site(program)) == normalised(INTERPRETER.decide(each))


def compiled_answer(document: dict[str, Any]) -> Any:
    machine = ENGINE._vm
    assert machine is not None, "the bundle compiles to a program"
    machine.set_input_json(json.dumps(document))
    try:
        return json.loads(machine.execute())
    except RuntimeError as error:
        assert "instruction limit" in str(error)
        return None


# The readings of modes and exemptions (rules.md, "How to read the rows"), on every engine path through
# `decide_on`: the compiled program, the interpreter and the OPA server.
RULE_IDS = sorted(BUNDLE.data["rules"])
MODES = ["dryrun", "warn", "deny"]  # from the least to the most strict
EARLY_WARNING = "CSAP-05 early warning"

every_mode = st.fixed_dictionaries({rule_id: st.sampled_from(MODES) for rule_id in RULE_IDS})
EXPIRIES = ["2026-11-21", "2026-11-30", "2027-01-31", "2027-06-30", "2028-12-31", "2030-12-31"]
TENANT_IDS = [
    f"t-{sector}" for sector in ["government", "public", "finance", "health", "enterprise", "startup"]
]

exemption_lists = st.lists(
    st.builds(
        lambda tenant, rule, site, expires: {
            "tenant": tenant,
            "rule": rule,
            **({"site": site} if site else {}),
            "expires": expires,
            "approver": "cpo",
            "reason": "r",
        },
        st.sampled_from(TENANT_IDS),
        st.sampled_from(RULE_IDS),
        st.sampled_from([None, None, "s0", "s1"]),
        st.sampled_from(EXPIRIES),
    ),
    max_size=6,
)


Case = tuple[Any, ...]  # what one example drew


def allowed_on(decide: Decide, bundle: PolicyBundle, document: dict[str, Any]) -> set[str]:
    return {site_id for site_id, verdict in decide(bundle, document).items() if verdict["allowed"]}


def check_raising_a_mode(decide: Decide, case: Case, data: st.DataObject) -> None:
    document, modes, early_warning, raised = case
    before = modes[raised] if raised != EARLY_WARNING else early_warning
    after = data.draw(st.sampled_from(MODES[MODES.index(before) :]), label="raised to")
    if raised == EARLY_WARNING:
        stricter = bundle_with(EXEMPTIONS, modes, early_warning=after)
    else:
        stricter = bundle_with(EXEMPTIONS, {**modes, raised: after}, early_warning)
    looser = bundle_with(EXEMPTIONS, modes, early_warning)
    assert allowed_on(decide, stricter, document) <= allowed_on(decide, looser, document)


def check_shortening_an_exemption(decide: Decide, case: Case, data: st.DataObject) -> None:
    document, exemptions = case
    own = [{**e, "tenant": document["tenant"]["tenant_id"]} for e in exemptions]  # so that they can waive
    if not own:
        return
    index = data.draw(st.integers(0, len(own) - 1), label="shortened")
    earlier = EXPIRIES[: EXPIRIES.index(own[index]["expires"]) + 1]
    shorter = [
        *own[:index],
        {**own[index], "expires": data.draw(st.sampled_from(earlier))},
        *own[index + 1 :],
    ]
    assert allowed_on(decide, bundle_with(shorter), document) <= allowed_on(
        decide, bundle_with(own), document
    )


def check_a_later_deadline(decide: Decide, case: Case, data: st.DataObject) -> None:
    document, exemptions = case
    bundle = bundle_with([{**e, "tenant": document["tenant"]["tenant_id"]} for e in exemptions])
    later = data.draw(st.sampled_from(DEADLINES[DEADLINES.index(document["job"]["deadline"]) :]))
    moved = {**document, "job": {**document["job"], "deadline": later}}
    assert allowed_on(decide, bundle, moved) <= allowed_on(decide, bundle, document)


def check_foreign_exemptions(decide: Decide, case: Case) -> None:
    document, own, others = case
    tenant_id = document["tenant"]["tenant_id"]
    own = [{**e, "tenant": tenant_id} for e in own]
    plain = decide(bundle_with([]), document)
    found = {f["rule"] for verdict in plain.values() for f in verdict["violations"] + verdict["warnings"]}
    # Other tenants' exemptions, for any rule, and the tenant's own for rules nothing here found.
    foreign = [e for e in others if e["tenant"] != tenant_id] + [
        {**e, "tenant": tenant_id} for e in others if e["rule"] not in found
    ]
    with_own = decide(bundle_with(own), document)
    assert normalised(decide(bundle_with(own + foreign), document)) == normalised(with_own)
    assert normalised(decide(bundle_with(foreign), document)) == normalised(plain)
    # What is waived is the tenant's own finding of the exempted rule, at the site it names if any.
    for site_id, verdict in with_own.items():
        for waived in verdict["exempted"]:
            assert any(e["rule"] == waived["rule"] and e.get("site", site_id) == site_id for e in own), waived


# Each property in process (the compiled program and the interpreter) and on the OPA server, where a
# decision under a new bundle costs a check and an install: a quarter of the examples there.
ON_THE_SERVER = bounded(max(1, EXAMPLES // 4))
mode_changes = st.tuples(
    requests, every_mode, st.sampled_from(MODES), st.sampled_from([*RULE_IDS, EARLY_WARNING])
)
exemption_changes = st.tuples(requests, exemption_lists)
foreign_exemptions = st.tuples(requests, exemption_lists, exemption_lists)


@PROPERTY
@given(case=mode_changes, data=st.data())
def test_raising_a_rules_mode_never_allows_more_sites(
    decide_in_process: Decide, case: Case, data: st.DataObject
) -> None:
    check_raising_a_mode(decide_in_process, case, data)


@pytest.mark.production_stack
@ON_THE_SERVER
@given(case=mode_changes, data=st.data())
def test_raising_a_rules_mode_never_allows_more_sites_on_the_opa_server(
    decide_on_opa: Decide, case: Case, data: st.DataObject
) -> None:
    check_raising_a_mode(decide_on_opa, case, data)


@PROPERTY
@given(case=exemption_changes, data=st.data())
def test_shortening_an_exemption_never_allows_more_sites(
    decide_in_process: Decide, case: Case, data: st.DataObject
) -> None:
    check_shortening_an_exemption(decide_in_process, case, data)


@pytest.mark.production_stack
@ON_THE_SERVER
@given(case=exemption_changes, data=st.data())
def test_shortening_an_exemption_never_allows_more_sites_on_the_opa_server(
    decide_on_opa: Decide, case: Case, data: st.DataObject
) -> None:
    check_shortening_an_exemption(decide_on_opa, case, data)


@PROPERTY
@given(case=exemption_changes, data=st.data())
def test_a_later_deadline_never_allows_more_sites(
    decide_in_process: Decide, case: Case, data: st.DataObject
) -> None:
    check_a_later_deadline(decide_in_process, case, data)


@pytest.mark.production_stack
@ON_THE_SERVER
@given(case=exemption_changes, data=st.data())
def test_a_later_deadline_never_allows_more_sites_on_the_opa_server(
    decide_on_opa: Decide, case: Case, data: st.DataObject
) -> None:
    check_a_later_deadline(decide_on_opa, case, data)


@PROPERTY
@given(case=foreign_exemptions)
def test_an_exemption_for_another_tenant_or_another_rule_waives_nothing(
    decide_in_process: Decide, case: Case
) -> None:
    check_foreign_exemptions(decide_in_process, case)


@pytest.mark.production_stack
@ON_THE_SERVER
@given(case=foreign_exemptions)
def test_an_exemption_for_another_tenant_or_another_rule_waives_nothing_on_the_opa_server(
    decide_on_opa: Decide, case: Case
) -> None:
    check_foreign_exemptions(decide_on_opa, case)
