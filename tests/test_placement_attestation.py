"""Placement attestations: every placement carries the marketplace's signed claim (job, run, site, pool, a
digest of the site's attributes, policy revision, decision, time), and `sovereign attest verify` checks it
offline from the event and the public keys alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from contracts.events import JobPlacedEvent
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.shared.db import unit_of_work
from services.shared.domain.attestation import (
    attest_placement,
    placement_attestation_failure,
    site_attributes_sha256,
)
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import period_of
from services.shared.domain.signing import Signer
from services.shared.settings import REPO_ROOT, Settings
from sovereign.attest_commands import attest_verify
from tests.conftest import KEYRING, TEST_KEYS, request_event
from tests.storage_support import make_engine, offer_all, outbox, placement_context

CATALOGUE = load_catalogue(REPO_ROOT / "catalogue")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine((f"sqlite:///{tmp_path / 'placement.db'}", ""), "placement", PLACEMENT_TABLES)


def place(engine: Engine, tenant: str = "hanbit-ai") -> JobPlacedEvent:
    ctx = placement_context(attester=TEST_KEYS.marketplace)
    offer_all(engine, ctx)
    request = request_event(tenant)
    with unit_of_work(engine) as session:
        placement.on_job_requested(ctx, session, request)
    [row] = [r for r in outbox(engine, "jobs.placed") if r.key == str(request.data.job_id)]
    return JobPlacedEvent.model_validate_json(row.payload)


def test_a_placement_carries_an_attestation_that_verifies(engine: Engine) -> None:
    placed = place(engine).data
    assert placed.attestation is not None
    claim = placed.attestation.claim
    site = next(o.site for o in CATALOGUE.offers if o.site.site_id == placed.site_id)
    assert (claim.job_id, claim.site_id, claim.pool_id, claim.attempt) == (
        placed.job_id,
        placed.site_id,
        placed.pool_id,
        placed.attempt,
    )
    assert claim.site_attributes_sha256 == site_attributes_sha256(site)
    assert claim.decision_id == placed.explanation.decision_id
    assert placement_attestation_failure(placed, KEYRING) is None


def test_a_tampered_or_foreign_attestation_fails(engine: Engine) -> None:
    placed = place(engine).data
    attestation = placed.attestation
    assert attestation is not None
    elsewhere = next(o.site.site_id for o in CATALOGUE.offers if o.site.site_id != placed.site_id)
    claim_elsewhere = attestation.claim.model_copy(update={"site_id": elsewhere})
    cases = {
        # The event says another site than the one attested.
        "differ from what the marketplace attested": placed.model_copy(update={"site_id": elsewhere}),
        # The claim itself was edited after signing.
        "bad signature": placed.model_copy(
            update={"attestation": attestation.model_copy(update={"claim": claim_elsewhere})}
        ),
        # Signed by a key the keyring does not know, or by a tenant's key.
        "unknown key": placed.model_copy(
            update={
                "attestation": attest_placement(
                    Signer("self-made", Ed25519PrivateKey.generate()), attestation.claim
                )
            }
        ),
        "has the tenant role, not the marketplace role": placed.model_copy(
            update={"attestation": attest_placement(TEST_KEYS.tenants["mois"], attestation.claim)}
        ),
        "no attestation": placed.model_copy(update={"attestation": None}),
    }
    for reason, forged in cases.items():
        assert reason in (placement_attestation_failure(forged, KEYRING) or ""), reason


async def test_attest_verify_checks_a_months_placements_offline(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [place(engine, tenant) for tenant in ("hanbit-ai", "mois", "hanil-bank")]
    attested = events[0].data.attestation
    assert attested is not None
    month = period_of(attested.claim.placed_at)
    good = tmp_path / "placed.jsonl"
    good.write_text("".join(e.model_dump_json() + "\n" for e in events))
    settings = Settings(keyring_path=TEST_KEYS.keyring)
    assert await attest_verify(good, None, None, settings) == 0
    assert "3 of 3 placements verified; 0 failed" in capsys.readouterr().out

    tampered = events[1].data.model_copy(update={"pool_id": "another-pool"})
    bad = tmp_path / "tampered.jsonl"
    lines = [events[0], events[1].model_copy(update={"data": tampered})]
    bad.write_text("".join(e.model_dump_json() + "\n" for e in lines))
    assert await attest_verify(bad, None, month, settings) == 1
    printed = capsys.readouterr().out
    assert f"FAIL  job {events[1].data.job_id}" in printed and "pool_id differ" in printed
    assert "1 of 2 placements placed in" in printed

    assert await attest_verify(good, None, "1999-01", settings) == 1  # nothing placed that month
    assert "0 of 0 placements" in capsys.readouterr().out
    assert await attest_verify(good, None, None, Settings()) == 2  # no keyring to verify with
    (tmp_path / "garbage.json").write_text("{not json")
    assert await attest_verify(tmp_path / "garbage.json", TEST_KEYS.keyring, None, settings) == 2
