"""One set of Rego for every engine: the same decisions from regorus's compiled program, its interpreter
and the OPA server (built from OPA's Go module by set-up, run as compose runs it over policies/)."""

from __future__ import annotations

import json
import random
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.events import JobKind, JobRequest, JobRequestedEvent
from services.placement.logic import policy_input, sites_document
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import (
    EmbeddedRegoEngine,
    OpaServerEngine,
    PolicyBundle,
    PolicyEngineError,
    run_rego_tests,
    verdicts_by_site,
)
from services.shared.embedded_broker import free_loopback_port
from services.shared.settings import REPO_ROOT
from sovereign.stack.installation import installation
from sovereign.verification.workload import generate
from tests.conftest import catalogue_pools, normalised
from tests.test_policy_properties import EXAMPLES, bounded, bundle_with, requests, worse_evidence

BUNDLE = PolicyBundle.load(REPO_ROOT / "policies")
INTERPRETED = EmbeddedRegoEngine(BUNDLE, compile_program=False)
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def cases() -> list[dict[str, Any]]:
    market = sites_document({offer.site.site_id: offer.site for offer in CATALOGUE.offers}, catalogue_pools())
    jobs: list[dict[str, Any]] = [
        {"csap_grade": "high", "datasets": [{"name": "d", "n2sf_grade": "C"}]},
        {"datasets": [{"name": "d", "categories": ["credit"], "personal_info": True, "contains_rrn": True}]},
        {"datasets": [{"name": "d", "categories": ["genomic", "map"], "pseudonymised": True}]},
        {"training_ops": 3e26, "generative_ai": True, "internet_egress": True, "importance": "important"},
    ]
    documents = []
    for tenant in CATALOGUE.tenants.values():
        for extra in jobs:
            request = JobRequest.model_validate(
                {
                    "tenant_id": tenant.tenant_id,
                    "client_request_id": "c",
                    "name": "n",
                    "kind": JobKind.TRAINING,
                    "gpu_count": 8,
                    "expected_hours": 4,
                    "deadline": (NOW + timedelta(days=90)).isoformat(),
                    **extra,
                }
            )
            documents.append(
                policy_input(request, tenant.model_dump(mode="json", exclude_none=True), market, NOW)
            )
    return documents


def workload_cases(now: datetime) -> list[dict[str, Any]]:
    """The demo's realistic jobs over the catalogue."""
    market = sites_document({offer.site.site_id: offer.site for offer in CATALOGUE.offers}, catalogue_pools())
    return [
        policy_input(
            job,
            CATALOGUE.tenants[job.tenant_id].model_dump(mode="json", exclude_none=True),
            market,
            now,
        )
        for job in generate(120, seed=now.day, now=now)
        if job.tenant_id in CATALOGUE.tenants
    ]


@pytest.mark.production_stack
def test_opa_s_own_test_runner_passes_the_rego_suite() -> None:
    result = subprocess.run(
        [str(installation().opa_bin), "test", str(REPO_ROOT / "policies")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"PASS: (\d+)/(\d+)", result.stdout)
    assert passed is not None and passed.group(1) == passed.group(2) and int(passed.group(1)) >= 70, (
        result.stdout
    )


def golden_case() -> dict[str, Any]:
    """The golden jobs.requested example, as placement would ask about it."""
    market = sites_document({offer.site.site_id: offer.site for offer in CATALOGUE.offers}, catalogue_pools())
    event = JobRequestedEvent.model_validate_json(
        (REPO_ROOT / "contracts/examples/jobs.requested.json").read_text()
    )
    tenant = CATALOGUE.tenants[event.data.tenant_id].model_dump(mode="json", exclude_none=True)
    return policy_input(event.data, tenant, market, NOW)


def parity_documents() -> list[dict[str, Any]]:
    """The golden example, the hand-made cases and the demo's realistic jobs on three dates (certificates
    lapse as time goes on, so later dates bring other rules into play): a few hundred inputs. The Rego
    tests' own inputs run on OPA through `opa test` and on regorus through `sovereign policy test`."""
    return [golden_case(), *cases()] + [
        document for days in (0, 400, 1200) for document in workload_cases(NOW + timedelta(days=days))
    ]


@pytest.mark.production_stack
def test_regorus_compiled_and_interpreted_and_the_opa_server_decide_alike(opa_url: str) -> None:
    compiled = EmbeddedRegoEngine(BUNDLE)
    interpreted = EmbeddedRegoEngine(BUNDLE, compile_program=False)
    server = OpaServerEngine(opa_url, BUNDLE, timeout_seconds=10)
    documents = parity_documents()
    assert len(documents) >= 300
    for document in documents:
        answer = normalised(compiled.decide(document))
        assert answer == normalised(interpreted.decide(document))
        assert normalised(server.decide(document)) == answer
    assert compiled.interpreted_after_failure == 0


@pytest.mark.production_stack
@bounded(EXAMPLES // 2)  # each example is two requests to the server
@given(requests, st.randoms(use_true_random=False))
def test_the_opa_server_decides_generated_and_broken_inputs_as_regorus(
    opa_url: str, document: dict[str, Any], rng: random.Random
) -> None:
    """The hostile inputs of the property tests (evidence removed, nulled, blanked, in odd case) on the
    server too: OPA and regorus read an undefined reference under `not` differently, and only running
    both shows a rule that leans on either reading."""
    server = OpaServerEngine(opa_url, BUNDLE, timeout_seconds=10)
    _, worse = worse_evidence(document, rng)
    for each in (document, worse):
        assert normalised(server.decide(each)) == normalised(INTERPRETED.decide(each))


@pytest.mark.production_stack
def test_every_absence_denies_on_the_program_and_the_opa_server_too(opa_url: str) -> None:
    """`policy test`'s absence checks run on the interpreter; the same requests on the two other engines."""
    run = run_rego_tests(BUNDLE)
    compiled = EmbeddedRegoEngine(BUNDLE)
    server = OpaServerEngine(opa_url, BUNDLE, timeout_seconds=10)
    for case in run.absence:
        for engine in (compiled, server):
            assert case.sites_without_finding(engine.decide(case.request)) == [], (engine.name, case.name)
    assert len(run.absence) == sum(r.name.startswith("absence: ") for r in run.results) > 60
    assert compiled.interpreted_after_failure == 0


def test_an_unreachable_opa_server_fails_the_decision_closed() -> None:
    engine = OpaServerEngine(f"http://127.0.0.1:{free_loopback_port()}", BUNDLE, timeout_seconds=0.5)
    with pytest.raises(PolicyEngineError, match="OPA server did not decide"):
        engine.decide(cases()[0])


def test_a_malformed_opa_url_is_refused() -> None:
    with pytest.raises(PolicyEngineError, match="not an http"):
        OpaServerEngine("opa:8181", BUNDLE)


def test_the_parity_cases_exercise_many_rules() -> None:
    embedded = EmbeddedRegoEngine(BUNDLE)
    rules = {
        v["rule"]
        for d in cases()
        for verdict in embedded.decide(d).values()
        for v in verdict["violations"] + verdict["warnings"]
    }
    assert len(rules) >= 15


@pytest.mark.parametrize("days_ahead", [0, 400, 1200])
def test_compiled_program_and_interpreter_decide_alike(days_ahead: int) -> None:
    """Certificates lapse as the clock moves on, so later dates bring other rules into play."""
    compiled = EmbeddedRegoEngine(BUNDLE)
    interpreted = EmbeddedRegoEngine(BUNDLE, compile_program=False)
    assert compiled.compiled and not interpreted.compiled
    documents = cases() + workload_cases(NOW + timedelta(days=days_ahead))
    for document in documents:
        assert compiled.evaluate(document) == interpreted.evaluate(document)
    assert compiled.interpreted_after_failure == 0


def test_compiled_program_and_interpreter_agree_on_exemptions_and_modes() -> None:
    files = dict(BUNDLE.files)
    data = json.loads(files["data.json"])
    # Every rule in every mode, and an exemption per tenant and rule, some narrowed to one site.
    for index, rule in enumerate(sorted(data["rules"])):
        data["rules"][rule]["mode"] = ("deny", "warn", "dryrun")[index % 3]
    data["exemptions"] = [
        {
            "tenant": tenant_id,
            "rule": rule,
            "approver": "cpo@example.go.kr",
            "reason": "pilot",
            "expires": "2027-06-30",
            **({"site": "nacc-haenam"} if index % 2 else {}),
        }
        for tenant_id in CATALOGUE.tenants
        for index, rule in enumerate(["RES-01", "N2SF-02", "EXP-01"])
    ]
    files["data.json"] = json.dumps(data)
    bundle = PolicyBundle(files)
    compiled = EmbeddedRegoEngine(bundle)
    interpreted = EmbeddedRegoEngine(bundle, compile_program=False)
    waived = 0
    for document in cases() + workload_cases(NOW):
        answer = compiled.evaluate(document)
        assert normalised(verdicts_by_site(answer)) == normalised(interpreted.decide(document))
        waived += len(answer["waived"])
    assert waived > 0
    assert compiled.interpreted_after_failure == 0


def exempting(expires: Any) -> PolicyBundle:
    return bundle_with(
        [{"tenant": "mois", "rule": "RES-01", "approver": "cpo", "reason": "pilot", "expires": expires}]
    )


@pytest.mark.parametrize("expires", ["soon", "2027-02-30", 20270630, None, "2300-01-01"])
def test_an_exemption_whose_expiry_is_not_a_date_is_void_in_both_engines(expires: Any) -> None:
    """Refused at publication (data.json's schema); an engine fed such data anyway voids it, and neither
    fails the evaluation."""
    bundle = exempting(expires)
    document = cases()[0]
    assert document["tenant"]["tenant_id"] == "mois"
    assert EmbeddedRegoEngine(exempting("2027-06-30")).evaluate(document)["waived"]  # a real date would waive
    for engine in (EmbeddedRegoEngine(bundle), EmbeddedRegoEngine(bundle, compile_program=False)):
        answer = engine.evaluate(document)
        assert answer["waived"] == [] and engine.interpreted_after_failure == 0
        assert normalised(verdicts_by_site(answer)) == normalised(EmbeddedRegoEngine(BUNDLE).decide(document))


def eighty_four_sites() -> dict[str, Any]:
    document = cases()[0]
    # Six copies of each catalogue site: 84 sites, past the 25,000 instructions the machine allows at once.
    sites = {f"{site_id}-{n}": site for site_id, site in document["sites"].items() for n in range(6)}
    return {**document, "sites": sites}


def test_many_sites_run_on_the_machine_a_few_at_a_time_and_decide_as_the_interpreter() -> None:
    compiled = EmbeddedRegoEngine(BUNDLE)
    interpreted = EmbeddedRegoEngine(BUNDLE, compile_program=False)
    many = eighty_four_sites()
    assert normalised(compiled.decide(many)) == normalised(interpreted.decide(many))
    assert compiled.interpreted_after_failure == 0
    assert len(compiled.decide(many)) == 84


def test_a_run_the_machine_stops_is_split_until_it_fits() -> None:
    compiled = EmbeddedRegoEngine(BUNDLE)
    compiled.SITES_PER_RUN = 1000  # one run over every site, past the machine's limit
    many = eighty_four_sites()
    assert normalised(compiled.decide(many)) == normalised(EmbeddedRegoEngine(BUNDLE).decide(many))
    assert compiled.interpreted_after_failure == 0


def test_when_the_program_fails_otherwise_the_interpreter_answers() -> None:
    class FailingMachine:
        def set_input_json(self, document: str) -> None:
            pass

        def execute(self) -> str:
            raise RuntimeError("the machine broke")

    compiled = EmbeddedRegoEngine(BUNDLE)
    compiled._vm = FailingMachine()
    document = cases()[0]
    assert normalised(compiled.decide(document)) == normalised(EmbeddedRegoEngine(BUNDLE).decide(document))
    assert compiled.interpreted_after_failure == 1
