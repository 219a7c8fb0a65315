"""Auditor attestations: an auditor's Ed25519 signature over a site's attributes, so a placement can cite
attributes someone vouched for. Keys never live in the repository; `sovereign auditor` makes them."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.events import (
    JobPlaced,
    JobPlacedEvent,
    PlacementAttestation,
    PlacementClaim,
    SiteAttestation,
    SiteAttributes,
)
from services.shared.domain.signing import Keyring, KeyRole, Signer, model_form, pre_jcs_form


def signed_bytes(site: SiteAttributes) -> bytes:
    """What the auditor signs: every attribute of the site, canonically encoded."""
    return json.dumps(site.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def sign_site(private_key: Ed25519PrivateKey, key_id: str, site: SiteAttributes) -> SiteAttestation:
    signature = private_key.sign(signed_bytes(site))
    return SiteAttestation(auditor_key_id=key_id, signature=base64.b64encode(signature).decode())


def verification_failure(
    site: SiteAttributes, attestation: SiteAttestation, auditor_keys: dict[str, Ed25519PublicKey]
) -> str | None:
    """None if a listed auditor signed exactly these attributes; otherwise why not."""
    key = auditor_keys.get(attestation.auditor_key_id)
    if key is None:
        return f"auditor key {attestation.auditor_key_id!r} is not a listed auditor"
    try:
        key.verify(base64.b64decode(attestation.signature, validate=True), signed_bytes(site))
    except (InvalidSignature, ValueError):
        return f"the signature by {attestation.auditor_key_id!r} does not match the offered attributes"
    return None


def load_auditor_keys(path: Path | None) -> dict[str, Ed25519PublicKey]:
    """The listed auditors: a JSON object of key id -> base64 raw Ed25519 public key."""
    if path is None:
        return {}
    listed = json.loads(path.read_text(encoding="utf-8"))
    return {
        key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(text)) for key_id, text in listed.items()
    }


def load_attestations(path: Path | None) -> dict[str, SiteAttestation]:
    """Site id -> the auditor attestation the factory presents with its offer."""
    if path is None:
        return {}
    listed = json.loads(path.read_text(encoding="utf-8"))
    return {site_id: SiteAttestation.model_validate(entry) for site_id, entry in listed.items()}


def site_attributes_sha256(site: SiteAttributes) -> str:
    """The digest a placement attests: of the same bytes an auditor signs."""
    return hashlib.sha256(signed_bytes(site)).hexdigest()


def attest_placement(signer: Signer, claim: PlacementClaim) -> PlacementAttestation:
    return PlacementAttestation(
        claim=claim, key_id=signer.key_id, signature=signer.signature_over(model_form(claim))
    )


def placement_attestation_failure(placed: JobPlaced, keyring: Keyring) -> str | None:
    """None if a marketplace key signed exactly this placement's claim and the claim is this placement;
    otherwise why not. Needs nothing but the event and the keyring."""
    attestation = placed.attestation
    if attestation is None:
        return "the placement carries no attestation"
    forms = [model_form(attestation.claim)]
    if JobPlacedEvent.accepts_pre_jcs_signatures():
        forms.append(pre_jcs_form(attestation.claim))
    failure = keyring.signature_failure(forms, attestation.key_id, attestation.signature, KeyRole.MARKETPLACE)
    if failure is not None:
        return failure
    claim = attestation.claim
    stated = {
        "job_id": placed.job_id,
        "tenant_id": placed.tenant_id,
        "attempt": placed.attempt,
        "site_id": placed.site_id,
        "pool_id": placed.pool_id,
        "decision_id": placed.explanation.decision_id,
        "policy_revision": placed.explanation.policy_revision,
    }
    differing = [name for name, value in stated.items() if getattr(claim, name) != value]
    if differing:
        return f"the event's {', '.join(differing)} differ from what the marketplace attested"
    return None
