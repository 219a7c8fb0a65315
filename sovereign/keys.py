"""Signing keys: `sovereign keys new` makes one key pair and lists its public key in a keyring; throwaway
keys for a run on one machine (the demo, the benchmark, the tests) are a key per tenant, one factory key
for every site, a compliance officer's key and the marketplace's, made at start in a scratch directory.
Keys never live in the repository."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.shared.domain.signing import KeyRole, Signer, make_key
from sovereign.options import Commands

FACTORY_KEY_ID = "factory-demo"
OFFICER_KEY_ID = "officer-demo"
MARKETPLACE_KEY_ID = "marketplace-demo"


@dataclass(frozen=True)
class ThrowawayKeys:
    directory: Path
    tenants: dict[str, Signer]
    factory: Signer
    officer: Signer
    marketplace: Signer

    @property
    def keyring(self) -> Path:
        return self.directory / "keyring.json"

    def private_key(self, signer: Signer) -> Path:
        return self.directory / f"{signer.key_id}.key"

    def service_env(self) -> dict[str, str]:
        """Services' settings: all read the keyring; the factory agent signs with the factory key, placement
        attests with the marketplace key."""
        return {
            "SOVEREIGN_KEYRING": str(self.keyring),
            "SOVEREIGN_SIGNING_KEY": str(self.private_key(self.factory)),
            "SOVEREIGN_SIGNING_KEY_ID": self.factory.key_id,
            "SOVEREIGN_ATTESTATION_KEY": str(self.private_key(self.marketplace)),
            "SOVEREIGN_ATTESTATION_KEY_ID": self.marketplace.key_id,
        }


def throwaway_keys(directory: Path, tenant_ids: Iterable[str], site_ids: Iterable[str]) -> ThrowawayKeys:
    tenants = {
        tenant_id: make_key(directory, f"{tenant_id}-demo", KeyRole.TENANT, tenant_id)
        for tenant_id in sorted(set(tenant_ids))
    }
    factory = make_key(directory, FACTORY_KEY_ID, KeyRole.FACTORY, "demo factories", sorted(set(site_ids)))
    officer = make_key(directory, OFFICER_KEY_ID, KeyRole.OFFICER, "cpo@example.go.kr")
    marketplace = make_key(directory, MARKETPLACE_KEY_ID, KeyRole.MARKETPLACE, "the marketplace")
    return ThrowawayKeys(directory, tenants, factory, officer, marketplace)


def register(commands: Commands) -> None:
    keys = commands.add_parser("keys", help="signing keys of tenants, factories and officers").add_subparsers(
        dest="keys_command", required=True
    )
    new_key = keys.add_parser("new", help="make an Ed25519 key pair and list its public key in keyring.json")
    new_key.add_argument("--dir", required=True, help="where to write KEY_ID.key and keyring.json")
    new_key.add_argument("--key-id", required=True)
    new_key.add_argument("--role", required=True, choices=[role.value for role in KeyRole])
    new_key.add_argument("--principal", required=True, help="the tenant id, factory or officer name")
    new_key.add_argument("--site", action="append", default=[], help="a site a factory key speaks for")
    new_key.set_defaults(handler=_keys_new)


def _keys_new(args: argparse.Namespace) -> int:
    if args.role == KeyRole.FACTORY and not args.site:
        print("error: a factory key needs at least one --site it speaks for", file=sys.stderr)
        return 2
    directory = Path(args.dir)
    try:
        make_key(directory, args.key_id, KeyRole(args.role), args.principal, args.site)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"private key {directory / f'{args.key_id}.key'} (keep it secret); "
        f"public key listed in {directory / 'keyring.json'}"
    )
    return 0
