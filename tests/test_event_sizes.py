"""The bounds of contracts/limits.py hold: the largest valid requests and offers, decided over the largest
market, cause no event (decision, placement, queueing, refusal, site snapshot, and each tenant copy) near the
broker's message limit, and a request or an offer past a bound is refused with the bound named."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Engine

from contracts.envelope import MAX_PORTABLE_INTEGER
from contracts.events import (
    DATA_CATEGORIES,
    CapacityOffered,
    CapacityOfferedEvent,
    CapacityRejectedEvent,
    ExemptedFinding,
    JobRequest,
    JobRequestedEvent,
    RuleViolation,
    SiteVerdict,
)
from contracts.limits import (
    BROKER_MESSAGE_MAX_BYTES,
    MAX_ASSUMPTION_LENGTH,
    MAX_ASSUMPTIONS,
    MAX_CLIENT_REQUEST_ID_LENGTH,
    MAX_DATASETS,
    MAX_DERIVED_EVENT_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_FINDING_BYTES_PER_SITE,
    MAX_MODEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_POOLS_PER_SITE,
    MAX_REGION_LENGTH,
    MAX_REGIONS,
    MAX_SITES,
)
from services.placement import handlers as placement
from services.placement.logic import SUMMARY_LENGTH, within_budget
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.shared.db import unit_of_work
from services.shared.domain.signing import Keyring
from sovereign.keys import throwaway_keys
from tests.storage_support import CATALOGUE, make_engine, outbox, placement_context

EXAMPLES = max(3, int(os.environ.get("SOVEREIGN_PROPERTY_EXAMPLES", "100")) // 5)
# The widest character: four bytes of UTF-8, one code point of a length bound.
WIDE = "\U0001d54f"
SITE_IDS = [f"{index:02d}-" + "s" * 60 for index in range(MAX_SITES)]
ONE_MORE = "one-more"
_KEYS = throwaway_keys(
    Path(tempfile.mkdtemp(prefix="sovereign-size-keys-")), CATALOGUE.tenants, [*SITE_IDS, ONE_MORE]
)
KEYRING = Keyring.load(_KEYS.keyring)


def wide(length: int) -> str:
    return WIDE * length


@st.composite
def maximal_offer(draw: st.DrawFn, site_id: str) -> CapacityOffered:
    countries = st.sampled_from(["KR", "CN", "US", "HK", "JP", "RU"])
    expires = date.today() + timedelta(days=draw(st.integers(1, 400)))
    csap = draw(st.none() | st.just({"grade": draw(st.sampled_from(["low", "medium"])), "expires": expires}))
    pools = [
        {
            "pool_id": f"{site_id[:57]}-p{index:02d}",
            "accelerator_model": wide(MAX_MODEL_LENGTH),
            "generation": draw(st.integers(1, 12)),
            "accelerator_origin": draw(countries),
            "gpu_count": draw(st.integers(0, MAX_PORTABLE_INTEGER)),
            "price_krw_per_gpu_hour": draw(st.integers(1, MAX_PORTABLE_INTEGER)),
            "price_krw_per_million_input_tokens": MAX_PORTABLE_INTEGER,
            "price_krw_per_million_output_tokens": MAX_PORTABLE_INTEGER,
            "power_kw_per_gpu": 10,
            "pue": 3,
        }
        for index in range(MAX_POOLS_PER_SITE)
    ]
    site = {
        "site_id": site_id,
        "name": wide(MAX_NAME_LENGTH),
        "country": draw(countries),
        "region": wide(MAX_REGION_LENGTH),
        "operator": wide(MAX_NAME_LENGTH),
        "operator_country": draw(countries),
        "operator_type": draw(st.sampled_from(["government", "public", "private"])),
        "ops_staff_country": draw(countries),
        "management_country": draw(countries),
        "internet_facing": draw(st.booleans()),
        "csap": csap,
        "separation": draw(st.sampled_from(["physical", "logical"])),
        "integrated_audit_log": draw(st.booleans()),
        "external_network_blocked": draw(st.booleans()),
        "encryption_at_rest": draw(st.booleans()),
        "holds_reid_key": draw(st.booleans()),
        "closed_environment": draw(st.booleans()),
        "assumptions": [wide(MAX_ASSUMPTION_LENGTH)] * MAX_ASSUMPTIONS,
    }
    return CapacityOffered.model_validate({"site": site, "pools": pools})


@st.composite
def maximal_request(draw: st.DrawFn) -> JobRequestedEvent:
    tenant = draw(st.sampled_from(sorted(CATALOGUE.tenants)))
    datasets = [
        {
            "name": wide(MAX_NAME_LENGTH),
            "n2sf_grade": draw(st.sampled_from(["C", "S", "O"])),
            "categories": sorted(DATA_CATEGORIES),
            "personal_info": draw(st.booleans()),
            "pseudonymised": draw(st.booleans()),
            "contains_rrn": draw(st.booleans()),
        }
        for _ in range(MAX_DATASETS)
    ]
    request = JobRequest.model_validate(
        {
            "tenant_id": tenant,
            "client_request_id": draw(st.uuids()).hex + wide(MAX_CLIENT_REQUEST_ID_LENGTH - 32),
            "name": wide(MAX_NAME_LENGTH),
            "kind": draw(st.sampled_from(["training", "fine_tuning", "inference", "batch"])),
            "gpu_count": draw(st.integers(1, 64)),
            "accelerator_model": draw(st.none() | st.just(wide(MAX_MODEL_LENGTH))),
            "expected_hours": draw(st.floats(0.01, 8760)),
            "deadline": (datetime.now(UTC) + timedelta(days=draw(st.integers(1, 3650)))).isoformat(),
            "csap_grade": draw(st.sampled_from(["none", "low", "medium", "high"])),
            "datasets": datasets,
            "purpose": draw(st.sampled_from(["service", "statistics", "research", "commercial"])),
            "generative_ai": draw(st.booleans()),
            "internet_egress": draw(st.booleans()),
            "external_ai_apis": draw(st.booleans()),
            "importance": draw(st.sampled_from(["normal", "important"])),
            "training_ops": draw(st.none() | st.just(5e18) | st.just(1e27)),
            "preferred_regions": [wide(MAX_REGION_LENGTH)] * MAX_REGIONS,
            "excluded_regions": [wide(MAX_REGION_LENGTH)] * MAX_REGIONS,
            "priority": draw(st.sampled_from(["low", "normal", "high", "urgent"])),
            "max_attempts": 5,
        }
    )
    event = JobRequestedEvent.create(source=f"tenant/{tenant}", subject=tenant, data=request)
    return _KEYS.tenants[tenant].sign(event)


def plain_offer(site_id: str) -> CapacityOffered:
    """A catalogue site's offer under another id, with as many pools as a site may have."""
    template = CATALOGUE.offers[0]
    pools = [
        template.pools[0].model_copy(update={"pool_id": f"{site_id[:57]}-p{index:02d}"})
        for index in range(MAX_POOLS_PER_SITE)
    ]
    site = template.site.model_copy(update={"site_id": site_id})
    return template.model_copy(update={"site": site, "pools": pools, "attestation": None})


def offer(ctx: placement.PlacementContext, engine: Engine, offered: CapacityOffered) -> None:
    event = CapacityOfferedEvent.create(source="factory/size", subject=offered.site.site_id, data=offered)
    with unit_of_work(engine) as session:
        placement.on_capacity_offered(ctx, session, _KEYS.factory.sign(event))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    # Every example is already maximal: there is nothing to shrink towards.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_the_largest_valid_inputs_cause_events_well_below_the_broker_limit(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    database = tmp_path_factory.mktemp("sizes") / "placement.db"
    engine = make_engine((f"sqlite:///{database}", ""), "placement", PLACEMENT_TABLES)
    ctx = placement_context(keyring=KEYRING)
    offers = [data.draw(maximal_offer(site_id)) for site_id in SITE_IDS]
    for offered in offers:
        offer(ctx, engine, offered)
    requests = [data.draw(maximal_request()) for _ in range(2)]
    for request in requests:
        assert len(request.model_dump_json(exclude_none=True).encode()) <= MAX_ENVELOPE_BYTES
        with unit_of_work(engine) as session:
            placement.on_job_requested(ctx, session, request)
    rows = outbox(engine)
    topics = {row.topic for row in rows}
    assert "capacity.rejected" not in topics, [
        r.payload[:300] for r in rows if r.topic == "capacity.rejected"
    ]
    assert {"market.sites", "policy.decisions"} <= topics
    assert topics & {"jobs.placed", "jobs.queued", "jobs.rejected"}
    sizes = {(row.topic, row.id): len(row.payload) + len(row.key) + len(str(row.headers)) for row in rows}
    largest = max(sizes.values())
    assert largest <= MAX_DERIVED_EVENT_BYTES, sorted(sizes.items(), key=lambda item: -item[1])[:3]


def test_the_derived_bound_is_well_below_what_the_brokers_take() -> None:
    assert MAX_ENVELOPE_BYTES <= MAX_DERIVED_EVENT_BYTES <= BROKER_MESSAGE_MAX_BYTES // 2
    properties = (Path(__file__).parents[1] / "deploy/kafka/server.properties").read_text()
    assert f"message.max.bytes={BROKER_MESSAGE_MAX_BYTES}" in properties.splitlines()


finding_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=5000)
findings = st.lists(
    st.builds(RuleViolation, rule=finding_text, message=finding_text, mode=st.sampled_from(["deny", "warn"])),
    max_size=300,
)


@settings(max_examples=EXAMPLES * 5, deadline=None, derandomize=True)
@given(
    violations=findings,
    warnings=findings,
    exempted=st.lists(
        st.builds(
            ExemptedFinding,
            rule=finding_text,
            message=finding_text,
            approver=finding_text,
            expires=st.dates(),
            reason=finding_text,
        ),
        max_size=100,
    ),
)
def test_a_faulty_policy_cannot_make_a_verdict_larger_than_its_budget(
    violations: list[RuleViolation], warnings: list[RuleViolation], exempted: list[ExemptedFinding]
) -> None:
    verdict = SiteVerdict(
        site_id="s", allowed=False, violations=violations, warnings=warnings, exempted=exempted
    )
    bounded = within_budget(verdict)
    # Three summing-up findings at most (one per list) may go past the budget, each of bounded size.
    room = MAX_FINDING_BYTES_PER_SITE + 3 * (2 * SUMMARY_LENGTH + 100) * 4
    parts = [*bounded.violations, *bounded.warnings, *bounded.exempted]
    assert sum(len(part.model_dump_json().encode()) for part in parts) <= room
    assert bounded.allowed is verdict.allowed
    for name in ("violations", "warnings", "exempted"):
        whole, kept = getattr(verdict, name), getattr(bounded, name)
        assert bool(whole) == bool(kept)  # a list with findings never comes back empty
        if kept != whole:
            assert kept[:-1] == whole[: len(kept) - 1] and "more findings, not listed" in kept[-1].message


def request_document(**changes: Any) -> dict[str, Any]:
    return {
        "tenant_id": "mois",
        "client_request_id": "bounds",
        "name": "job",
        "kind": "training",
        "gpu_count": 1,
        "expected_hours": 1,
        "deadline": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"datasets": [{"name": "d"}] * (MAX_DATASETS + 1)}, ("datasets",)),
        ({"preferred_regions": ["seoul"] * (MAX_REGIONS + 1)}, ("preferred_regions",)),
        ({"excluded_regions": ["x" * (MAX_REGION_LENGTH + 1)]}, ("excluded_regions", 0)),
        ({"name": "x" * (MAX_NAME_LENGTH + 1)}, ("name",)),
        ({"name": " \t "}, ("name",)),
        ({"datasets": [{"name": "   "}]}, ("datasets", 0, "name")),
        ({"datasets": [{"name": "d", "categories": ["general"] * 8}]}, ("datasets", 0, "categories")),
        ({"accelerator_model": ""}, ("accelerator_model",)),
    ],
)
def test_a_request_past_a_bound_is_refused_where_it_is(
    changes: dict[str, Any], location: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as refused:
        JobRequest.model_validate(request_document(**changes))
    assert [error["loc"] for error in refused.value.errors()] == [location]


def test_an_offer_past_the_market_bounds_is_refused_with_the_bound_named(tmp_path: Path) -> None:
    engine = make_engine((f"sqlite:///{tmp_path / 'placement.db'}", ""), "placement", PLACEMENT_TABLES)
    ctx = placement_context(keyring=KEYRING)
    offers = [plain_offer(site_id) for site_id in SITE_IDS]
    for offered in offers[:-1]:
        offer(ctx, engine, offered)
    assert not outbox(engine, CapacityRejectedEvent.model_fields["type"].default)
    # A site may not take another's pool, nor grow past the bound of pools by offering new ones.
    first, last = offers[0], offers[-1]
    stolen = last.model_copy(update={"pools": [first.pools[0]]})
    grown = first.model_copy(
        update={"pools": [first.pools[0].model_copy(update={"pool_id": f"{first.site.site_id[:57]}-extra"})]}
    )
    offer(ctx, engine, stolen)
    offer(ctx, engine, grown)
    # The market is one short of its bound: the last site fits, one more does not.
    offer(ctx, engine, last)
    one_more = last.model_copy(update={"site": last.site.model_copy(update={"site_id": ONE_MORE})})
    offer(ctx, engine, one_more)
    reasons = [row.payload.decode() for row in outbox(engine, "capacity.rejected")]
    assert len(reasons) == 3, reasons
    assert f"{first.pools[0].pool_id} is {first.site.site_id}'s" in reasons[0]
    assert f"over the bound of {MAX_POOLS_PER_SITE}" in reasons[1]
    assert f"the market holds {MAX_SITES} sites" in reasons[2]
