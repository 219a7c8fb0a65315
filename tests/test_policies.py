"""The Rego bundle: its own tests pass, a broken copy fails them, and decisions on the real catalogue hold."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts.events import JobKind, JobRequest
from services.placement.logic import parse_verdicts, policy_input, sites_document
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle, PolicyEngineError, run_rego_tests
from services.shared.settings import REPO_ROOT
from sovereign.policy_commands import policy_test
from tests.conftest import catalogue_pools

POLICY_DIR = REPO_ROOT / "policies"
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def test_every_rego_test_passes_and_every_rule_fires_in_some_test() -> None:
    run = run_rego_tests(PolicyBundle.load(POLICY_DIR))
    failures = [f"{r.name}: {r.error}" for r in run.results if not r.passed]
    assert not failures
    assert run.not_exercised == set()
    assert len(run.results) >= 60 and run.ok


def catalogue(kind: str) -> set[str]:
    rules = PolicyBundle.load(POLICY_DIR).data["rules"]
    return {rule_id for rule_id, entry in rules.items() if entry["kind"] == kind}


def test_rule_ids_in_rego_match_the_catalogue_entries() -> None:
    bundle = PolicyBundle.load(POLICY_DIR)
    emitted = set(re.findall(r'"rule":\s*"([A-Z0-9]+-[0-9]+)"', "\n".join(bundle.policies.values())))
    assert emitted == catalogue("rule")
    for entry in bundle.data["rules"].values():
        assert entry["mode"] in {"deny", "warn", "dryrun"}
        assert entry["title"] and entry["modelled_on"] and isinstance(entry["source_uncertain"], bool)


def test_every_catalogue_entry_has_an_allowing_and_a_denying_test() -> None:
    names = [
        name
        for text in PolicyBundle.load(POLICY_DIR).tests.values()
        for name in re.findall(r"^(test_\w+)", text, re.M)
    ]
    for rule_id in catalogue("rule") | catalogue("derived") | catalogue("exemption"):
        prefix = "test_" + rule_id.lower().replace("-", "") + "_"
        own = [name for name in names if name.startswith(prefix)]
        assert any(n.endswith("_allowed") for n in own), f"{rule_id} has no allowing test"
        assert any(n.endswith(("_denied", "_warns")) for n in own), f"{rule_id} has no denying test"


# Built-ins regorus lacks or that make a decision depend on more than its input: kept out of policies so
# the same Rego gives the same answer on the embedded engine and on an OPA server.
FORBIDDEN_BUILTINS = [
    "rego.metadata",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
    "time.now_ns",
    "print(",
]


def test_policies_use_no_builtin_the_embedded_engine_lacks() -> None:
    for path, text in PolicyBundle.load(POLICY_DIR).files.items():
        for builtin in FORBIDDEN_BUILTINS:
            assert builtin not in text, f"{path} uses {builtin}"


def test_a_rule_without_a_denying_test_is_reported_unexercised(tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    tests = copy / "locality" / "locality_test.rego"
    tests.write_text(
        tests.read_text().replace('test_loc01_map_data_abroad_denied if "LOC-01"', 'x_disabled if "LOC-01"')
    )
    run = run_rego_tests(PolicyBundle.load(copy))
    assert run.not_exercised == {"LOC-01"} and not run.ok


def test_a_broken_policy_fails_its_tests(tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    residency = copy / "residency" / "residency.rego"
    residency.write_text(residency.read_text().replace('country != "KR"', 'country == "KR"'))
    run = run_rego_tests(PolicyBundle.load(copy))
    failed = {r.name.rsplit(".", 1)[-1] for r in run.results if not r.passed}
    assert "test_res01_public_sector_abroad_denied" in failed and not run.ok


def test_policy_test_command_reports_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_test(POLICY_DIR) == 0
    printed = capsys.readouterr().out
    assert "rules exercised: 22 of 22" in printed and " 0 failed" in printed
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    (copy / "csap" / "csap.rego").write_text(
        (copy / "csap" / "csap.rego").read_text().replace("< grade_rank[required", "> grade_rank[required")
    )
    assert policy_test(copy) == 1
    assert "FAIL  data.sovereign.csap_test.test_csap01_grade_too_low_denied" in capsys.readouterr().out


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    original = PolicyBundle.load(copy).revision
    assert PolicyBundle.load(copy).revision == original
    (copy / "data.json").write_text((copy / "data.json").read_text().replace('"deny"', '"warn"', 1))
    assert PolicyBundle.load(copy).revision != original


def test_a_bundle_that_does_not_compile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package broken\n\nallow if {\n")
    with pytest.raises(PolicyEngineError, match="does not compile"):
        EmbeddedRegoEngine(PolicyBundle.load(tmp_path))


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyEngineError, match=r"no \.rego files"):
        PolicyBundle.load(tmp_path)


def test_evaluation_error_raises_policy_engine_error(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        'package sovereign.placement\n\nimport rego.v1\n\ndecision := {"x": 1 / input.zero}\n'
    )
    engine = EmbeddedRegoEngine(PolicyBundle.load(tmp_path))
    with pytest.raises(PolicyEngineError):
        engine.decide({"zero": 0})


def decide(tenant_id: str, **job: object) -> dict[str, bool]:
    request = JobRequest.model_validate(
        {
            "tenant_id": tenant_id,
            "client_request_id": "c",
            "name": "n",
            "kind": JobKind.TRAINING,
            "gpu_count": 8,
            "expected_hours": 4,
            "deadline": (NOW + timedelta(days=60)).isoformat(),
            **job,
        }
    )
    sites = {offer.site.site_id: offer.site for offer in CATALOGUE.offers}
    pools = catalogue_pools()
    tenant = CATALOGUE.tenants[tenant_id].model_dump(mode="json", exclude_none=True)
    engine = EmbeddedRegoEngine(PolicyBundle.load(POLICY_DIR))
    verdicts = parse_verdicts(
        engine.decide(policy_input(request, tenant, sites_document(sites, pools), NOW)), set(sites)
    )
    return {site_id: verdict.allowed for site_id, verdict in verdicts.items()}


def test_ministry_stays_in_korea() -> None:
    allowed = decide("mois")
    assert (
        not allowed["tokyo-hyperscale"]
        and not allowed["us-n-virginia"]
        and not allowed["singapore-gpu-cloud"]
    )
    assert allowed["skt-gasan"] and allowed["nacc-haenam"]


def test_high_grade_job_only_on_closed_physically_separated_high_sites() -> None:
    allowed = decide("mois", csap_grade="high")
    assert {site for site, ok in allowed.items() if ok} == {"nadc-gwangju", "nacc-haenam"}


def test_startup_may_go_abroad_but_never_to_chinese_designed_chips() -> None:
    allowed = decide("hanbit-ai")
    assert allowed["us-n-virginia"] and allowed["tokyo-hyperscale"]
    assert not allowed["cn-ascend-cloud"]
