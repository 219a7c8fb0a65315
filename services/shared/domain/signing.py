"""Who said it: Ed25519 signatures over event envelopes, and the keyring that says whose key is whose.

A signature covers the RFC 8785 (JSON Canonicalization Scheme) form of the envelope as its sender wrote it,
with the `signature` member left out. A verifier computes that form from the JSON it received, not from its
own model of the event, so any language with a JCS implementation signs what it sends: spacing, member
order, escapes, `2` or `2.0`, `Z` or `+00:00`, fields left to their defaults, none of it matters to the
signature; any changed value does. `contracts/signing-vector.json` is a worked example.
Keys never live in the repository: `sovereign keys` makes them, and the demo makes throwaway ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from pydantic import BaseModel, ConfigDict, Field

from contracts import AnyEvent
from contracts.envelope import EnvelopeSignature, UnreadableJson, read_json
from services.shared.batch import PoisonMessage

SignedEvent = TypeVar("SignedEvent", bound=AnyEvent)


class KeyRole(StrEnum):
    TENANT = "tenant"  # signs its job requests and cancels
    FACTORY = "factory"  # signs its sites' capacity offers, runs' starts and ends, and usage reports
    OFFICER = "officer"  # a compliance officer: signs policy revisions
    MARKETPLACE = "marketplace"  # placement: signs the attestation of every placement


class KeyEntry(BaseModel):
    """A public key and who holds it. A tenant key speaks for `principal` (the tenant id); a factory key
    for each of `sites`; an officer key for the officer named `principal`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: KeyRole
    principal: str = Field(min_length=1, max_length=200)
    sites: list[str] = Field(default_factory=list)
    public_key: str = Field(description="Base64 of the raw 32-byte Ed25519 public key.")

    def speaks_for(self, party: str) -> bool:
        return party in self.sites if self.role is KeyRole.FACTORY else party == self.principal


class KeyringFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: dict[str, KeyEntry]


class SignatureRefused(PoisonMessage):
    """An event whose signature does not prove who it claims to come from; it goes to the dead-letter topic
    with this reason and has no effect."""


@dataclass(frozen=True)
class Keyring:
    entries: dict[str, KeyEntry]

    @classmethod
    def empty(cls) -> Self:
        return cls({})

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """The keyring file; none configured means no key is known, so every signed topic is refused."""
        if path is None:
            return cls.empty()
        return cls(KeyringFile.model_validate_json(path.read_text(encoding="utf-8")).keys)

    def refusal(self, event: AnyEvent, role: KeyRole, party: str) -> str | None:
        """None if the event is signed by a known key of `role` that speaks for `party`; otherwise why."""
        signature = event.signature
        if signature is None:
            return f"unsigned: a {event.type} must be signed with the {role.value} key of {party!r}"
        try:
            forms = [signed_form(event)]
        except UnsignableContent as error:
            return str(error)
        if type(event).accepts_pre_jcs_signatures():
            forms.append(pre_jcs_form(event))
        return self.signature_failure(forms, signature.key_id, signature.value, role, party)

    def signature_failure(
        self, forms: Sequence[bytes], key_id: str, value: str, role: KeyRole, party: str | None = None
    ) -> str | None:
        """None if `value` is key_id's signature over one of `forms` (the signed bytes, in the current form
        and any older one still accepted) and key_id is a known key of `role` (that speaks for `party`, if
        given); otherwise why not."""
        entry = self.entries.get(key_id)
        if entry is None:
            return f"unknown key {key_id!r}: it is not in the keyring"
        if entry.role is not role:
            return f"key {key_id!r} has the {entry.role.value} role, not the {role.value} role"
        if party is not None and not entry.speaks_for(party):
            return f"key {key_id!r} ({entry.principal}) does not speak for {party!r}"
        if not any(_verifies(entry, value, form) for form in forms):
            return f"bad signature: this is not what key {key_id!r} signed"
        return None

    def author(self, content: dict[str, Any], role: KeyRole) -> KeyEntry | None:
        """The key of `role` whose signature on an envelope as received (JSON that is not a valid event)
        verifies, or None: who is owed an answer for it."""
        signature = content.get("signature")
        if not isinstance(signature, dict):
            return None
        key_id, value = signature.get("key_id"), signature.get("value")
        entry = self.entries.get(key_id) if isinstance(key_id, str) else None
        if entry is None or entry.role is not role or not isinstance(value, str):
            return None
        try:
            form = jcs({name: member for name, member in content.items() if name != "signature"})
        except UnsignableContent:
            return None
        return entry if _verifies(entry, value, form) else None

    def require(self, event: AnyEvent, role: KeyRole, party: str) -> None:
        if (reason := self.refusal(event, role, party)) is not None:
            raise SignatureRefused(reason)


def staleness(signed_at: datetime, now: datetime, max_age: timedelta) -> str | None:
    """Why an envelope signed at `signed_at` is not fresh at `now`, or None. A little clock skew is allowed
    ahead; an envelope older than max_age could be a replay from beyond what the inbox remembers."""
    if signed_at > now + CLOCK_SKEW:
        return f"signed at {signed_at.isoformat()}, in the future (now {now.isoformat()})"
    if now - signed_at > max_age:
        return (
            f"signed at {signed_at.isoformat()}, more than {max_age.total_seconds():.0f} s before it was "
            f"handled ({now.isoformat()}): send a new request"
        )
    return None


CLOCK_SKEW = timedelta(seconds=60)


def _verifies(entry: KeyEntry, value: str, form: bytes) -> bool:
    try:
        public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(entry.public_key, validate=True))
        public_key.verify(base64.b64decode(value, validate=True), form)
    except (InvalidSignature, ValueError):
        return False
    return True


class UnsignableContent(SignatureRefused):
    """JSON that has no RFC 8785 form, so no signature can cover it: the envelope is refused unread."""


def received_content(value: bytes) -> dict[str, Any]:
    """An envelope's JSON as received, read as its model reads it (`read_json`): duplicate member names,
    non-finite numbers, a byte-order mark and deep nesting are refused."""
    try:
        return read_json(value)
    except UnreadableJson as error:
        raise UnsignableContent(str(error)) from None


def jcs(content: Any) -> bytes:
    """The RFC 8785 form: members sorted by UTF-16 code units, numbers as ECMAScript writes them, strings
    with the fewest escapes, no whitespace, UTF-8."""
    try:
        return rfc8785.dumps(content)
    except rfc8785.CanonicalizationError as error:
        raise UnsignableContent(
            f"no RFC 8785 form ({error}): integers must lie within +-(2**53 - 1), text must be valid Unicode"
        ) from None


def signed_form(event: AnyEvent) -> bytes:
    """What an envelope's signature covers: the RFC 8785 form of the envelope as its sender wrote it (as
    received, or as this service will send it), without its `signature` member. A received envelope's is
    computed once (the signature check and the reuse digest both ask)."""
    reading = event.reading
    if reading is not None and reading.signed_form is not None:
        return reading.signed_form
    content = event.sent_content()
    content.pop("signature", None)
    form = jcs(content)
    if reading is not None:
        reading.signed_form = form
    return form


def model_form(signed: BaseModel) -> bytes:
    """The RFC 8785 form of a model as this service writes it: what an attestation inside an event signs."""
    return jcs(signed.model_dump(mode="json"))


def pre_jcs_form(signed: BaseModel) -> bytes:
    """The signed bytes before RFC 8785: the parsed model dumped with sorted keys. Accepted for one minor
    version of each signed topic after the change (`Event.accepts_pre_jcs_signatures`)."""
    return canonical_json(signed.model_dump(mode="json", exclude={"signature"}))


def canonical_json(content: Any) -> bytes:
    """JSON with keys sorted and no spaces: the same bytes for the same content, for this project's own
    digests (decision inputs, site snapshots, the decision log's chain)."""
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


@dataclass(frozen=True)
class Signer:
    key_id: str
    key: Ed25519PrivateKey

    @classmethod
    def load(cls, path: Path, key_id: str) -> Self:
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key_id, key)

    def signature_over(self, form: bytes) -> str:
        return base64.b64encode(self.key.sign(form)).decode()

    def sign(self, event: SignedEvent) -> SignedEvent:
        """The event as it will be sent, signed. The signature covers its RFC 8785 form; the JSON sent is
        its dump, which has the same form."""
        unsigned = event.model_copy(update={"signature": None})
        signature = EnvelopeSignature(key_id=self.key_id, value=self.signature_over(signed_form(unsigned)))
        return event.model_copy(update={"signature": signature})


def public_key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """PEM, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)


def add_to_keyring(path: Path, key_id: str, entry: KeyEntry) -> None:
    keyring = KeyringFile.model_validate_json(path.read_text()) if path.exists() else KeyringFile(keys={})
    keyring.keys[key_id] = entry
    path.write_text(keyring.model_dump_json(indent=2) + "\n")


def make_key(
    directory: Path, key_id: str, role: KeyRole, principal: str, sites: Iterable[str] = ()
) -> Signer:
    """A new key pair: the private key in DIRECTORY/KEY_ID.key, the public key in DIRECTORY/keyring.json.
    An existing key is never replaced: signatures made with it would stop verifying."""
    if (directory / f"{key_id}.key").exists():
        raise FileExistsError(f"{directory / f'{key_id}.key'} exists: choose another key id")
    key = Ed25519PrivateKey.generate()
    write_private_key(key, directory / f"{key_id}.key")
    entry = KeyEntry(
        role=role, principal=principal, sites=list(sites), public_key=public_key_text(key.public_key())
    )
    add_to_keyring(directory / "keyring.json", key_id, entry)
    return Signer(key_id, key)
