"""Auditor attestations: signatures over site attributes, their verification by placement, VER-01."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from contracts.events import CapacityOfferedEvent, CapacityRejectedEvent, JobKind, JobRequest
from services.placement import handlers as placement
from services.placement.logic import parse_verdicts, policy_input, sites_document
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import SiteRow
from services.shared.db import create_service_engine, table_of, unit_of_work
from services.shared.domain.attestation import (
    load_attestations,
    load_auditor_keys,
    sign_site,
    verification_failure,
)
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT
from sovereign.auditor_commands import auditor_keygen, auditor_sign
from tests.conftest import TEST_KEYS, catalogue_pools
from tests.storage_support import placement_context

CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")
AUDITOR = Ed25519PrivateKey.generate()
KEYS = {"kisa-1": AUDITOR.public_key()}
SITE = CATALOGUE.offers[0].site


def test_a_listed_auditors_signature_verifies() -> None:
    assert verification_failure(SITE, sign_site(AUDITOR, "kisa-1", SITE), KEYS) is None


def test_a_changed_attribute_breaks_the_signature() -> None:
    attestation = sign_site(AUDITOR, "kisa-1", SITE)
    claimed = SITE.model_copy(update={"csap": SITE.csap.model_copy(update={"grade": "high"})})  # type: ignore[union-attr]
    assert "does not match" in (verification_failure(claimed, attestation, KEYS) or "")


def test_an_unlisted_or_impostor_key_is_refused() -> None:
    impostor = Ed25519PrivateKey.generate()
    assert "not a listed auditor" in (
        verification_failure(SITE, sign_site(impostor, "nobody", SITE), KEYS) or ""
    )
    assert "does not match" in (verification_failure(SITE, sign_site(impostor, "kisa-1", SITE), KEYS) or "")
    garbled = sign_site(AUDITOR, "kisa-1", SITE).model_copy(update={"signature": "not base64!"})
    assert verification_failure(SITE, garbled, KEYS) is not None


def test_placement_refuses_a_badly_signed_offer_and_records_verified_ones(tmp_path: Path) -> None:
    engine = create_service_engine(
        f"sqlite:///{tmp_path / 'p.db'}",
        "placement",
        [table_of(OutboxMessage), table_of(ProcessedEvent), *PLACEMENT_TABLES],
    )
    ctx = placement_context(auditor_keys=KEYS)
    good, forged, plain = CATALOGUE.offers[0], CATALOGUE.offers[1], CATALOGUE.offers[2]
    offers = [
        good.model_copy(update={"attestation": sign_site(AUDITOR, "kisa-1", good.site)}),
        forged.model_copy(
            update={"attestation": sign_site(Ed25519PrivateKey.generate(), "kisa-1", forged.site)}
        ),
        plain,
    ]
    with unit_of_work(engine) as session:
        for offer in offers:
            placement.on_capacity_offered(
                ctx,
                session,
                TEST_KEYS.factory.sign(
                    CapacityOfferedEvent.create(source="factory/x", subject=offer.site.site_id, data=offer)
                ),
            )
    with Session(engine) as session:
        sites = {row.site_id: row.verified_by for row in session.exec(select(SiteRow))}
        rejected = [
            CapacityRejectedEvent.model_validate_json(r.payload).data
            for r in session.exec(
                select(OutboxMessage)
                .where(OutboxMessage.topic == "capacity.rejected")
                .order_by(col(OutboxMessage.id))
            )
        ]
    assert sites == {good.site.site_id: "kisa-1", plain.site.site_id: None}
    assert [r.site_id for r in rejected] == [forged.site.site_id] and "does not match" in rejected[0].reason


def test_a_tenant_requiring_verified_sites_goes_only_where_an_auditor_vouched() -> None:
    request = JobRequest.model_validate(
        {
            "tenant_id": "nia",
            "client_request_id": uuid.uuid4().hex,
            "name": "n",
            "kind": JobKind.TRAINING,
            "gpu_count": 8,
            "expected_hours": 2,
            "deadline": "2027-06-01T00:00:00Z",
        }
    )
    sites = {offer.site.site_id: offer.site for offer in CATALOGUE.offers}
    verified = {site_id: ("kisa-1" if site_id == "nacc-haenam" else None) for site_id in sites}
    tenant = CATALOGUE.tenants["nia"].model_dump(mode="json", exclude_none=True)
    market = sites_document(sites, catalogue_pools(), verified)
    document = policy_input(request, tenant, market, datetime(2026, 11, 22, tzinfo=UTC))
    verdicts = parse_verdicts(
        EmbeddedRegoEngine(PolicyBundle.load(REPO_ROOT / "policies")).decide(document), set(sites)
    )
    assert {s for s, v in verdicts.items() if v.allowed} == {"nacc-haenam"}
    assert "VER-01" in {v.rule for v in verdicts["skt-gasan"].violations}


def test_auditor_commands_make_keys_and_attestations_that_verify(tmp_path: Path) -> None:
    assert auditor_keygen(tmp_path, "kisa-2026") == 0
    assert (tmp_path / "kisa-2026.key").stat().st_mode & 0o077 == 0  # the private key is owner-only
    out = tmp_path / "attestations.json"
    assert (
        auditor_sign(tmp_path / "kisa-2026.key", "kisa-2026", REPO_ROOT / "catalogue", out, ["skt-pangyo"])
        == 0
    )
    keys = load_auditor_keys(tmp_path / "auditors.json")
    attestations = load_attestations(out)
    assert "skt-pangyo" not in attestations and len(attestations) == len(CATALOGUE.offers) - 1
    for offer in CATALOGUE.offers:
        if offer.site.site_id in attestations:
            assert verification_failure(offer.site, attestations[offer.site.site_id], keys) is None
    assert "kisa-2026" in json.loads((tmp_path / "auditors.json").read_text())
