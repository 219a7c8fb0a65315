"""`sovereign auditor ...`: make an auditor's key pair and sign the catalogue's site attributes.

Private keys are written where you say (never into the repository) with owner-only permissions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.shared.domain.attestation import sign_site
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import Signer, public_key_text, write_private_key
from services.shared.settings import Settings
from sovereign.options import Commands


def auditor_keygen(directory: Path, key_id: str) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path = directory / f"{key_id}.key"
    write_private_key(key, private_path)
    listed_path = directory / "auditors.json"
    listed = json.loads(listed_path.read_text()) if listed_path.exists() else {}
    listed[key_id] = public_key_text(key.public_key())
    listed_path.write_text(json.dumps(listed, indent=2) + "\n")
    print(f"private key {private_path} (keep it secret); public keys listed in {listed_path}")
    return 0


def auditor_sign(key_path: Path, key_id: str, catalogue_dir: Path, out: Path, skip: list[str]) -> int:
    try:
        key = Signer.load(key_path, key_id).key
    except ValueError as error:
        print(f"error: {error}")
        return 2
    signed = {
        offer.site.site_id: sign_site(key, key_id, offer.site).model_dump()
        for offer in load_catalogue(catalogue_dir).offers
        if offer.site.site_id not in skip
    }
    out.write_text(json.dumps(signed, indent=2) + "\n")
    print(f"signed the attributes of {len(signed)} sites as {key_id} into {out}")
    return 0


def register(commands: Commands) -> None:
    auditor = commands.add_parser("auditor", help="an auditor's keys and signatures").add_subparsers(
        dest="auditor_command", required=True
    )
    keygen = auditor.add_parser("keygen", help="make an Ed25519 key pair and list its public key")
    keygen.add_argument("--dir", required=True, help="where to write KEY_ID.key and auditors.json")
    keygen.add_argument("--key-id", required=True)
    keygen.set_defaults(handler=_auditor_keygen)
    sign = auditor.add_parser("sign", help="sign the catalogue sites' attributes")
    sign.add_argument("--key", required=True, help="the auditor's private key (PEM)")
    sign.add_argument("--key-id", required=True)
    sign.add_argument("--catalogue", help="catalogue directory (default: catalogue/)")
    sign.add_argument("--out", required=True, help="attestations JSON for the factory agent")
    sign.add_argument("--skip", action="append", default=[], help="a site not to vouch for (repeatable)")
    sign.set_defaults(handler=_auditor_sign)


def _auditor_keygen(args: argparse.Namespace) -> int:
    return auditor_keygen(Path(args.dir), args.key_id)


def _auditor_sign(args: argparse.Namespace) -> int:
    catalogue = Path(args.catalogue) if args.catalogue else Settings.from_env().catalogue_dir
    return auditor_sign(Path(args.key), args.key_id, catalogue, Path(args.out), args.skip)
