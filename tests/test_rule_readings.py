"""The readings of rules.md ("How to read the rows") that the policy once got wrong, each in the direction of
allowing too much, decided over the catalogue on every engine path: regorus's compiled program, its
interpreter and the OPA server. Then the data each reading rests on, as publication checks it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from services.placement.logic import policy_input, sites_document
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import DATA_SCHEMA, PolicyBundle, data_problems, verdicts_by_site
from services.shared.settings import REPO_ROOT
from tests.conftest import Decide, catalogue_pools, request_event

BUNDLE = PolicyBundle.load(REPO_ROOT / "policies")
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
MARKET = sites_document({offer.site.site_id: offer.site for offer in CATALOGUE.offers}, catalogue_pools())
NOW = datetime(2026, 12, 20, tzinfo=UTC)


def document(tenant_id: str, tenant: dict[str, Any] | None = None, **job: Any) -> dict[str, Any]:
    """A training job of the tenant's over the whole catalogue, due in March unless told otherwise."""
    request = request_event(tenant_id, **{"deadline": "2027-03-01T00:00:00+09:00", **job}).data
    record = CATALOGUE.tenants[tenant_id].model_dump(mode="json", exclude_none=True)
    return policy_input(request, {**record, **(tenant or {})}, MARKET, NOW)


def with_data(**changes: Any) -> PolicyBundle:
    """The shipped bundle with some rules' catalogue entries merged with new fields, and other exemptions."""
    data = json.loads(BUNDLE.files["data.json"])
    for rule_id, fields in changes.get("rules", {}).items():
        data["rules"][rule_id] = {**data["rules"][rule_id], **fields}
    data["exemptions"] = changes.get("exemptions", data["exemptions"])
    return PolicyBundle({**BUNDLE.files, "data.json": json.dumps(data)})


def modes_of(verdict: dict[str, Any], rule_id: str) -> set[str]:
    return {f["mode"] for f in verdict["violations"] + verdict["warnings"] if f["rule"] == rule_id}


def allowed(verdicts: dict[str, dict[str, Any]]) -> set[str]:
    return {site_id for site_id, verdict in verdicts.items() if verdict["allowed"]}


# 1. A rule's mode governs every finding it makes.
IMPORTANT = document("hanil-bank", importance="important")
FRONTIER = document("hanbit-ai", training_ops=3e26, open_weights=False)
# naver-gak-chuncheon's certificate ends on 2027-01-15: past this deadline, within 30 days of now.
EARLY = document("hanbit-ai", csap_grade="low", deadline="2027-01-10T00:00:00+09:00")


@pytest.mark.parametrize(
    ("job", "rule_id", "entry"),
    [
        (IMPORTANT, "FIN-03", {"mode": "deny"}),
        (FRONTIER, "EXP-03", {"mode": "deny"}),
        (EARLY, "CSAP-05", {"part_modes": {"early_warning": "deny"}}),
    ],
    ids=["FIN-03", "EXP-03", "CSAP-05 early warning"],
)
def test_a_warning_rule_set_to_deny_denies(
    decide_on: Decide, job: dict[str, Any], rule_id: str, entry: dict[str, Any]
) -> None:
    as_catalogued = decide_on(BUNDLE, job)
    warned = {site_id for site_id, verdict in as_catalogued.items() if modes_of(verdict, rule_id) == {"warn"}}
    assert warned & allowed(as_catalogued), "in its catalogue mode the rule warns at sites it allows"
    denying = decide_on(with_data(rules={rule_id: entry}), job)
    for site_id in warned:
        assert not denying[site_id]["allowed"] and modes_of(denying[site_id], rule_id) == {"deny"}, site_id
    assert allowed(denying) == allowed(as_catalogued) - warned


def test_csap05_early_warning_is_held_to_its_rules_weaker_mode(decide_on: Decide) -> None:
    chuncheon = "naver-gak-chuncheon"
    relaxed = with_data(rules={"CSAP-05": {"mode": "dryrun", "part_modes": {"early_warning": "deny"}}})
    verdict = decide_on(relaxed, EARLY)[chuncheon]
    assert verdict["allowed"] and modes_of(verdict, "CSAP-05") == {"dryrun"}


# 2. Country Group D:5 includes Hong Kong, as it includes Macau.
@pytest.mark.parametrize("field", ["hq_country", "parent_hq_country"])
@pytest.mark.parametrize("place", ["HK", "hk", "MO"])
def test_a_tenant_linked_to_hong_kong_or_macau_goes_to_export_review(
    decide_on: Decide, field: str, place: str
) -> None:
    verdicts = decide_on(BUNDLE, document("globex-sg", {field: place}))
    assert allowed(verdicts) == set()
    assert all(modes_of(verdict, "EXP-02") == {"deny"} for verdict in verdicts.values())


# 3. An exemption waives a finding only while it is in force for the whole job.
def res01_exemption(expires: str) -> dict[str, Any]:
    return {"tenant": "mois", "rule": "RES-01", "expires": expires, "approver": "cpo", "reason": "pilot"}


@pytest.mark.parametrize(
    ("expires", "waives"),
    [("2026-12-01", False), ("2027-01-20", False), ("2027-01-21", True), ("2027-06-30", True)],
)
def test_an_exemption_must_last_through_the_jobs_deadline(
    decide_on: Decide, expires: str, waives: bool
) -> None:
    job = document("mois", deadline="2027-01-21T12:00:00+09:00")
    tokyo = decide_on(with_data(exemptions=[res01_exemption(expires)]), job)["tokyo-hyperscale"]
    assert ("RES-01" in {e["rule"] for e in tokyo["exempted"]}) is waives
    assert ("RES-01" in {v["rule"] for v in tokyo["violations"]}) is not waives
    assert not tokyo["allowed"]  # other rules (SOV-01, CSAP) still keep a ministry out of Tokyo


def test_an_exemption_already_lapsed_waives_nothing_even_for_a_past_deadline(decide_on: Decide) -> None:
    job = document("mois", deadline="2026-12-01T00:00:00+09:00")  # the job's deadline has passed
    tokyo = decide_on(with_data(exemptions=[res01_exemption("2026-12-10")]), job)["tokyo-hyperscale"]
    assert tokyo["exempted"] == [] and "RES-01" in {v["rule"] for v in tokyo["violations"]}


# 4. An engine that meets a mode publication would refuse takes it as deny.
@pytest.mark.parametrize("mode", ["off", "Warn", "", 0, None, ["warn"]])
def test_an_unknown_mode_is_deny(decide_on: Decide, mode: Any) -> None:
    verdicts = decide_on(with_data(rules={"FIN-03": {"mode": mode}}), IMPORTANT)
    found = [verdict for verdict in verdicts.values() if modes_of(verdict, "FIN-03")]
    assert found and all(modes_of(v, "FIN-03") == {"deny"} and not v["allowed"] for v in found)


# The data these readings rest on, as `policy publish` and every service's activation check it.
def test_publication_refuses_an_unknown_mode_and_an_unknown_part() -> None:
    for entry, where in [
        ({"mode": "off"}, "rules/FIN-03/mode"),
        ({"part_modes": {"early_warning": "off"}}, "rules/FIN-03/part_modes/early_warning"),
        ({"part_modes": {"late_warning": "warn"}}, "rules/FIN-03/part_modes"),
    ]:
        problems = data_problems(with_data(rules={"FIN-03": entry}))
        assert any(where in line for line in problems), (entry, problems)
    assert data_problems(BUNDLE) == []


def test_the_parts_the_policy_emits_are_the_parts_the_catalogue_can_set() -> None:
    emitted = set(re.findall(r'"part":\s*"([a-z_]+)"', "\n".join(BUNDLE.policies.values())))
    rule_schema = DATA_SCHEMA["properties"]["rules"]["additionalProperties"]
    assert (
        emitted == set(rule_schema["properties"]["part_modes"]["propertyNames"]["enum"]) == {"early_warning"}
    )
    assert BUNDLE.data["rules"]["CSAP-05"]["part_modes"] == {"early_warning": "warn"}
    jsonschema.validate(BUNDLE.data, DATA_SCHEMA)


def test_d5_holds_hong_kong_and_every_place_of_chinese_design() -> None:
    lists = BUNDLE.data["country_lists"]
    assert {"CN", "HK", "MO"} <= set(lists["d5"])
    assert set(lists["chinese_design"]) <= set(lists["d5"])


def test_a_finding_in_a_mode_no_engine_should_answer_denies_its_site() -> None:
    answer = {
        "judged": ["a", "b", "c"],
        "kept": [
            {"site": "a", "rule": "FIN-03", "message": "m", "mode": "off"},
            {"site": "b", "rule": "FIN-03", "message": "m", "mode": "warn"},
            {"site": "c", "rule": "FIN-03", "message": "m", "mode": "dryrun"},
        ],
        "waived": [],
    }
    verdicts = verdicts_by_site(answer)
    assert not verdicts["a"]["allowed"] and verdicts["a"]["violations"][0]["mode"] == "deny"
    assert verdicts["b"]["allowed"] and verdicts["c"]["allowed"]


def test_the_readmes_rule_table_is_the_catalogue() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([A-Z0-9]+-[0-9]{2}) \| ([^|]+) \| ([^|]+) \|$", readme, re.M)

    def mode_cell(entry: dict[str, Any]) -> str:
        if entry["kind"] != "rule":
            return str(entry["kind"])
        parts = entry.get("part_modes", {})
        return str(entry["mode"]) + "".join(f"; {part.replace('_', ' ')}: {m}" for part, m in parts.items())

    assert rows == [
        (rule_id, mode_cell(entry), entry["title"]) for rule_id, entry in BUNDLE.data["rules"].items()
    ]
