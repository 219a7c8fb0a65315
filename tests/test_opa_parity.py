"""One set of Rego for both engines: the same decisions from the embedded engine and an OPA server.

The parity test needs an OPA server running policies/ (as compose.yaml starts it) at $OPA_URL; no OPA
binary is installable on the development machines, so without one it is skipped, saying so.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.events import JobKind, JobRequest
from services.placement.logic import policy_input
from services.shared.catalogue import load_catalogue
from services.shared.embedded_broker import free_loopback_port
from services.shared.policy import EmbeddedRegoEngine, OpaServerEngine, PolicyBundle, PolicyEngineError
from services.shared.settings import REPO_ROOT
from tests.conftest import catalogue_pools

BUNDLE = PolicyBundle.load(REPO_ROOT / "policies")
CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def cases() -> list[dict[str, Any]]:
    sites = {offer.site.site_id: offer.site for offer in CATALOGUE.offers}
    pools = catalogue_pools()
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
                policy_input(request, tenant.model_dump(mode="json", exclude_none=True), sites, pools, NOW)
            )
    return documents


def normalised(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        site: {
            key: sorted(map(str, value)) if isinstance(value, list) else value
            for key, value in verdict.items()
        }
        for site, verdict in decision.items()
    }


@pytest.mark.skipif(
    not os.environ.get("OPA_URL"), reason="no OPA server: set OPA_URL to one running policies/"
)
def test_embedded_engine_and_opa_server_decide_alike() -> None:
    embedded = EmbeddedRegoEngine(BUNDLE)
    server = OpaServerEngine(os.environ["OPA_URL"], BUNDLE, timeout_seconds=5)
    for document in cases():
        assert normalised(server.decide(document)) == normalised(embedded.decide(document))


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
