"""Inputs normalised and validated at the edge, before any policy reads them: country codes, data
categories, finite numbers, approvals that say something, and policy data that is refused at publication,
not at decision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import iso3166
import pytest
import regorus
from pydantic import ValidationError
from sqlmodel import Session, select

from contracts.events import (
    DATA_CATEGORIES,
    CapacityOffered,
    CapacityOfferedEvent,
    CapacityRejectedEvent,
    Dataset,
    JobRequest,
)
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import PoolRow
from services.shared.db import unit_of_work
from services.shared.domain.catalogue import CatalogueError, Tenant, load_catalogue
from services.shared.domain.policy import PolicyBundle, data_problems, run_rego_tests
from services.shared.domain.policy_check import check_directory
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT
from sovereign.policy_commands import policy_test
from tests.conftest import TEST_KEYS, request_event
from tests.storage_support import CATALOGUE, make_engine, placement_context

POLICY_DIR = REPO_ROOT / "policies"


def offer_with(**site: Any) -> dict[str, Any]:
    document = CATALOGUE.offers[0].model_dump(mode="json")
    document["site"].update(site)
    return document


def test_country_codes_are_read_in_any_case_and_stored_upper_case() -> None:
    offer = CapacityOffered.model_validate(offer_with(country="kr", management_country="Kr"))
    assert (offer.site.country, offer.site.management_country) == ("KR", "KR")
    assert offer.unknown_countries() == []


def test_a_site_s_region_is_read_in_any_case_and_stored_lower_case() -> None:
    offer = CapacityOffered.model_validate(offer_with(region="  Gyeonggi"))
    assert offer.site.region == "gyeonggi"
    with pytest.raises(ValidationError, match="at least 1 character"):
        CapacityOffered.model_validate(offer_with(region="   "))


@pytest.mark.parametrize("code", ["KOR", "K", "", "k1", "K R"])
def test_a_code_that_is_not_two_letters_is_refused(code: str) -> None:
    with pytest.raises(ValidationError, match="country"):
        CapacityOffered.model_validate(offer_with(country=code))


def test_two_letters_not_on_the_iso_list_are_named() -> None:
    document = offer_with(country="XX", ops_staff_country="zz")
    document["pools"][0]["accelerator_origin"] = "QQ"
    unknown = CapacityOffered.model_validate(document).unknown_countries()
    pool_id = document["pools"][0]["pool_id"]
    assert unknown == ["country 'XX'", "ops_staff_country 'ZZ'", f"pools.{pool_id}.accelerator_origin 'QQ'"]


def test_an_offer_with_an_unknown_code_is_refused_on_capacity_rejected(database_url: tuple[str, str]) -> None:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    ctx = placement_context()
    offer = CapacityOffered.model_validate(offer_with(operator_country="XX"))
    event = TEST_KEYS.factory.sign(
        CapacityOfferedEvent.create(source="factory/x", subject=offer.site.site_id, data=offer)
    )
    with unit_of_work(engine) as session:
        placement.on_capacity_offered(ctx, session, event)
    with Session(engine) as session:
        [row] = session.exec(select(OutboxMessage).where(OutboxMessage.topic == "capacity.rejected")).all()
        assert session.exec(select(PoolRow)).all() == []  # nothing of the offer entered the market
    refusal = CapacityRejectedEvent.model_validate_json(row.payload).data
    assert refusal.site_id == offer.site.site_id
    assert refusal.reason == "not ISO 3166-1 alpha-2 country codes: operator_country 'XX'"


def test_numbers_must_be_finite() -> None:
    valid = request_event().data.model_dump(mode="json")
    for field, literal in [
        ("training_ops", "Infinity"),
        ("expected_hours", "NaN"),
        ("training_ops", "1e400"),
    ]:
        text = json.dumps({**valid, field: 1.5}).replace(f'"{field}": 1.5', f'"{field}": {literal}')
        with pytest.raises(ValidationError, match="finite number"):
            JobRequest.model_validate_json(text)
    with pytest.raises(ValidationError, match="finite number"):
        JobRequest.model_validate({**valid, "training_ops": float("inf")})


def tenant_entry(**fields: Any) -> dict[str, Any]:
    return {**CATALOGUE.tenants["hanbit-ai"].model_dump(mode="json", exclude_none=True), **fields}


@pytest.mark.parametrize("field", ["sandbox_approval", "review_board_approval"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_approval_is_refused_in_the_registry(field: str, blank: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Tenant.model_validate(tenant_entry(**{field: blank}))


def copy_catalogue(tmp_path: Path) -> Path:
    directory = tmp_path / "catalogue"
    shutil.copytree(REPO_ROOT / "catalogue", directory)
    return directory


def edit_tenants(directory: Path, change: dict[str, Any]) -> None:
    path = directory / "tenants.json"
    document = json.loads(path.read_text())
    document["tenants"][1].update(change)
    path.write_text(json.dumps(document))


def test_a_registry_entry_with_an_unknown_country_is_a_load_error_naming_it(tmp_path: Path) -> None:
    directory = copy_catalogue(tmp_path)
    edit_tenants(directory, {"hq_country": "XX"})
    with pytest.raises(
        CatalogueError, match=r"tenants\.json: entry 1 \(.+\) is refused: hq_country: .*'XX' is not"
    ):
        load_catalogue(directory)
    edit_tenants(directory, {"hq_country": "us", "parent_hq_country": "cn"})
    tenant = next(iter(t for t in load_catalogue(directory).tenants.values() if t.parent_hq_country))
    assert (tenant.hq_country, tenant.parent_hq_country) == ("US", "CN")


def test_policy_test_refuses_a_registry_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = copy_catalogue(tmp_path)
    assert policy_test(POLICY_DIR, directory) == 0
    edit_tenants(directory, {"sandbox_approval": " "})
    assert policy_test(POLICY_DIR, directory) == 1
    assert "FAIL  registry: " in capsys.readouterr().out


def test_a_site_with_an_unknown_country_is_a_load_error(tmp_path: Path) -> None:
    directory = copy_catalogue(tmp_path)
    path = directory / "sites.json"
    document = json.loads(path.read_text())
    document["sites"][0]["site"]["management_country"] = "XX"
    path.write_text(json.dumps(document))
    with pytest.raises(CatalogueError, match="has unknown management_country 'XX'"):
        load_catalogue(directory)


def test_the_policy_s_country_list_is_the_iso_list_the_contracts_use() -> None:
    listed = PolicyBundle.load(POLICY_DIR).data["country_lists"]["iso_3166_1_alpha_2"]
    assert listed == sorted(iso3166.countries_by_alpha2)


def test_the_policy_s_data_categories_are_the_ones_the_contracts_accept() -> None:
    bundle = PolicyBundle.load(POLICY_DIR)
    engine = regorus.Engine()
    for path, text in bundle.policies.items():
        engine.add_policy(path, text)
    known = json.loads(engine.eval_rule_as_json("data.sovereign.facts.known_categories"))
    assert set(known) == DATA_CATEGORIES


@pytest.mark.parametrize("category", ["EMR", " emr ", "Core_Technology"])
def test_a_known_data_category_is_read_in_any_case(category: str) -> None:
    dataset = Dataset.model_validate({"name": "d", "categories": [category]})
    assert dataset.categories == [category.strip().lower()]


@pytest.mark.parametrize("category", ["medical_records", "\uff45\uff4d\uff52", "", "emr,map"])
def test_a_data_category_the_policies_do_not_know_is_refused(category: str) -> None:
    with pytest.raises(ValidationError, match="is not a data category the policies know"):
        Dataset.model_validate({"name": "d", "categories": [category]})


def with_data(tmp_path: Path, change: Any) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, directory)
    data = json.loads((directory / "data.json").read_text())
    change(data)
    (directory / "data.json").write_text(json.dumps(data))
    return directory


EXEMPTION = {
    "tenant": "mois",
    "rule": "RES-01",
    "expires": "2027-01-31",
    "approver": "cpo",
    "reason": "pilot",
}


@pytest.mark.parametrize(
    ("exemption", "problem"),
    [
        ({**EXEMPTION, "expires": "soon"}, "exemptions/0/expires"),
        ({**EXEMPTION, "expires": "2027-02-30"}, "exemptions/0/expires"),
        ({**EXEMPTION, "expires": "2300-01-01"}, "exemptions/0/expires"),
        ({**EXEMPTION, "approver": " "}, "exemptions/0/approver"),
        ({**EXEMPTION, "rule": "NOPE-01"}, "rule NOPE-01 is not in the catalogue"),
        ({k: v for k, v in EXEMPTION.items() if k != "reason"}, "'reason' is a required property"),
    ],
)
def test_a_malformed_exemption_is_refused_before_publication(
    tmp_path: Path, exemption: dict[str, Any], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = with_data(tmp_path, lambda data: data.__setitem__("exemptions", [exemption]))
    problems = data_problems(PolicyBundle.load(directory))
    assert any(problem in line for line in problems), problems
    assert not check_directory(directory).ok  # what publish and every service's activation run
    assert policy_test(directory) == 1
    assert "data.json refused" in capsys.readouterr().out


def test_modes_and_country_lists_are_checked_too(tmp_path: Path) -> None:
    def spoil(data: dict[str, Any]) -> None:
        data["rules"]["RES-01"]["mode"] = "off"
        data["country_lists"]["pipa_suspended"] = ["XX"]

    problems = data_problems(PolicyBundle.load(with_data(tmp_path, spoil)))
    assert any("rules/RES-01/mode" in line for line in problems)
    fixed = with_data(
        tmp_path / "b", lambda data: data["country_lists"].__setitem__("pipa_suspended", ["XX"])
    )
    assert data_problems(PolicyBundle.load(fixed)) == [
        "data.json country_lists/pipa_suspended: not ISO 3166-1 alpha-2 codes: XX"
    ]


def test_policy_test_shows_what_each_rule_reads_and_checks_each_absence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = run_rego_tests(PolicyBundle.load(POLICY_DIR))
    absence = [result for result in run.results if result.name.startswith("absence: ")]
    required = sum(1 for names in run.reads.values() for name in names if name not in run.optional)
    assert len(absence) == required > 60 and all(result.passed for result in absence)
    assert run.reads["FIN-01"] == ["job.datasets", "site.country", "site.management_country", "tenant.sector"]
    assert policy_test(POLICY_DIR) == 0
    printed = capsys.readouterr().out
    assert "  SOV-01   site.country, site.management_country" in printed
    assert "PASS  absence: RES-01 without tenant.sector finds against every site" in printed


def test_an_absence_the_policy_forgets_fails_policy_test(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, directory)
    completeness = directory / "lib" / "completeness.rego"
    # The check of management_country dropped: FIN-01 and SOV-01 would read it unchecked.
    checked = '"ops_staff_country", "management_country"},\n\t"tenant": {"hq_country"}'
    assert checked in completeness.read_text()
    completeness.write_text(
        completeness.read_text().replace(checked, '"ops_staff_country"},\n\t"tenant": {"hq_country"}')
    )
    run = run_rego_tests(PolicyBundle.load(directory))
    failed = {result.name for result in run.results if not result.passed}
    assert "absence: SOV-01 without site.management_country finds against every site" in failed
    assert not run.ok
