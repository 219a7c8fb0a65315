"""The verdict cache answers exactly what fresh evaluation answers: generated requests that share what the
policy reads (and differ in everything else: the job's other attributes, the time within a day, the sites
around them) go through one cache, and every decision equals the engine's own."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.shared.domain.money import KST
from services.shared.domain.policy import declared_reads
from services.shared.domain.verdict_cache import VerdictCache, day_of
from tests.test_policy_properties import (
    BUNDLE,
    ENGINE,
    NOW,
    PROPERTY,
    bounded,
    engine_with,
    jobs,
    requests,
    tenants,
)

SOME = bounded(10)
# One complete request over two sites (a KR one and a foreign one).
SITE = {
    "country": "KR",
    "operator_country": "KR",
    "ops_staff_country": "KR",
    "management_country": "KR",
    "region": "seoul",
    "operator_type": "private",
    "internet_facing": False,
    "separation": "physical",
    "integrated_audit_log": True,
    "external_network_blocked": True,
    "encryption_at_rest": True,
    "holds_reid_key": False,
    "closed_environment": True,
    "verified": True,
    "pools": [{"pool_id": "p1", "accelerator_model": "B200", "generation": 10, "accelerator_origin": "US"}],
}
EXAMPLE: dict[str, Any] = {
    "job": {
        "tenant_id": "t-finance",
        "client_request_id": "c",
        "name": "n",
        "kind": "training",
        "gpu_count": 8,
        "expected_hours": 4.0,
        "deadline": "2027-02-01T00:00:00Z",
        "csap_grade": "none",
        "datasets": [],
        "purpose": "service",
        "consent_obtained": True,
        "generative_ai": False,
        "internet_egress": False,
        "external_ai_apis": False,
        "importance": "normal",
        "open_weights": True,
    },
    "tenant": {
        "tenant_id": "t-finance",
        "name": "T",
        "sector": "finance",
        "hq_country": "KR",
        "sovereignty_level": "L1",
        "transfer_basis": [],
        "rrn_legal_basis": False,
        "export_licences": [],
        "requires_verified_sites": False,
    },
    "sites": {"s1": SITE, "s2": {**SITE, "country": "US", "management_country": "US"}},
    "now": NOW,
}

# Certificates expire at 24:00 KST and warn from 30 days before: the instants where a verdict can change
# with the time alone, each drawn with times a microsecond to a day either side.
EXPIRES = ["2026-11-30", "2026-12-20", "2027-03-31", "2028-12-31", "2030-12-31"]
BOUNDARIES = [
    datetime.fromisoformat(day).replace(tzinfo=KST) + timedelta(days=1 - warn)
    for day in EXPIRES
    for warn in (0, 30)
]
OFFSETS_US = st.sampled_from([-1, 0, 0, 1, 2, 3_600_000_000, 86_399_999_999, -86_400_000_000])
UNREAD = st.fixed_dictionaries(
    {
        "name": st.text(max_size=5),
        "gpu_count": st.integers(1, 64),
        "expected_hours": st.floats(0.1, 100),
        "client_request_id": st.text(max_size=5),
        "priority": st.sampled_from(["low", "normal", "urgent"]),
    }
)
READ = sorted((declared_reads(BUNDLE) or {}).get("job", set()))


def fresh(document: dict[str, Any]) -> dict[str, Any]:
    return ENGINE.decide(document)


@PROPERTY
@given(
    base=requests,
    boundary=st.sampled_from(BOUNDARIES),
    others=jobs,
    variants=st.lists(
        st.tuples(UNREAD, OFFSETS_US, st.sampled_from([None, *READ]), st.randoms(use_true_random=False)),
        min_size=2,
        max_size=6,
    ),
)
def test_cached_verdicts_equal_fresh_evaluation(
    base: dict[str, Any], boundary: datetime, others: dict[str, Any], variants: list[Any]
) -> None:
    """Variants of one request share a cache: the unread attributes changed, the time moved around an
    expiry, sites dropped or renamed, sometimes one attribute the policy reads taken from another job."""
    cache = VerdictCache()
    for unread, offset_us, read, rng in variants:
        job = {**base["job"], **unread}
        if read is not None:
            job.pop(read, None)
            job.update({read: others[read]} if read in others else {})
        kept = [s for s in sorted(base["sites"]) if rng.random() < 0.8] or sorted(base["sites"])[:1]
        document = {
            **base,
            "job": job,
            "now": (boundary + timedelta(microseconds=offset_us)).isoformat(),
            "sites": {(s if rng.random() < 0.8 else f"{s}-x"): base["sites"][s] for s in kept},
        }
        decided = cache.decide(ENGINE, document)
        assert decided.verdicts == fresh(document)
        assert decided.cached_sites <= set(document["sites"])


@SOME
@given(document=requests)
def test_a_repeated_decision_comes_from_memory_and_a_changed_site_does_not(document: dict[str, Any]) -> None:
    cache = VerdictCache()
    first = cache.decide(ENGINE, document)
    assert first.cached_sites == frozenset()
    again = cache.decide(ENGINE, document)
    assert again.cached_sites == set(document["sites"]) and again.verdicts == first.verdicts
    site_id = sorted(document["sites"])[0]
    changed = {
        **document,
        "sites": {**document["sites"], site_id: {**document["sites"][site_id], "verified": None}},
    }
    third = cache.decide(ENGINE, changed)
    assert site_id not in third.cached_sites and third.verdicts == fresh(changed)
    # Another day is another key: a certificate may have expired overnight.
    tomorrow = {**document, "now": "2026-11-23T00:00:00+09:00"}
    assert cache.decide(ENGINE, tomorrow).cached_sites == frozenset()


@pytest.mark.parametrize(
    "now",
    [
        None,
        7,
        "yesterday",
        "2026-11-22",
        "2026-11-22 10:00:00+00:00",
        "2026-11-22T10:00:00",
        "2300-01-01T00:00:00Z",
    ],
)
def test_a_time_the_policy_does_not_take_is_never_remembered(now: Any) -> None:
    assert day_of(now) is None
    document = {**EXAMPLE, "now": now}
    cache = VerdictCache()
    for _ in range(2):
        decided = cache.decide(ENGINE, document)
        assert decided.cached_sites == frozenset() and decided.verdicts == fresh(document)


def test_a_new_revision_forgets_every_verdict() -> None:
    cache = VerdictCache()
    cache.decide(ENGINE, EXAMPLE)
    assert cache.decide(ENGINE, EXAMPLE).cached_sites
    assert cache.decide(engine_with([]), EXAMPLE).cached_sites == frozenset()


# How the policy text reaches the job: facts.job.NAME, a check on (facts.)job with "NAME", job.NAME in facts.
JOB_ATTRIBUTE = re.compile(r'(?:facts\.job|\bjob)(?:\.([a-z_]+)|\[\s*"([a-z_]+)"\s*\]|,\s*"([a-z_]+)")')


def test_every_job_attribute_the_policies_read_is_declared() -> None:
    """The cache keys a job by its declared reads: an attribute a rule reads undeclared would let two
    jobs that differ in it share verdicts."""
    declared = (declared_reads(BUNDLE) or {}).get("job", set())
    read = {
        name
        for path, text in BUNDLE.policies.items()
        if not path.endswith("_test.rego")
        for match in JOB_ATTRIBUTE.finditer(text)
        for name in match.groups()
        if name
    }
    assert read, "the pattern finds the policies' reads of the job"
    assert read <= declared, f"read but not in completeness.needs: {sorted(read - declared)}"


@SOME
@given(base=requests, others=st.lists(tenants, min_size=2, max_size=4))
def test_the_same_job_on_the_same_day_for_another_tenant_is_decided_for_that_tenant(
    base: dict[str, Any], others: list[dict[str, Any]]
) -> None:
    """The tenant's document is part of the key: one tenant's verdicts never answer for another's job,
    however alike the jobs (the job's own tenant_id is not read, so it is left as it was)."""
    cache = VerdictCache()
    for tenant in others:
        document = {**base, "tenant": tenant}
        assert cache.decide(ENGINE, document).verdicts == fresh(document)


def test_a_tenant_whose_document_differs_gets_its_own_verdicts() -> None:
    cache = VerdictCache()
    cache.decide(ENGINE, EXAMPLE)
    sovereign = {**EXAMPLE, "tenant": {**EXAMPLE["tenant"], "sovereignty_level": "L2"}}
    decided = cache.decide(ENGINE, sovereign)
    assert decided.cached_sites == frozenset()
    assert decided.verdicts["s2"]["allowed"] is False and fresh(EXAMPLE)["s2"]["allowed"] is True
