"""Signed envelopes: what a signature covers, and the keys the command line makes."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.envelope import UnreadableJson
from contracts.events import JobRequestedEvent
from contracts.pinning import SIGNING_VECTOR_PATH
from services.shared.domain.signing import (
    KeyEntry,
    Keyring,
    KeyRole,
    Signer,
    UnsignableContent,
    jcs,
    make_key,
    pre_jcs_form,
    received_content,
    signed_form,
    write_private_key,
)
from sovereign.cli import main
from tests.conftest import (
    KEYRING,
    TEST_KEYS,
    TYPESCRIPT_CLIENT,
    request_event,
    signed_as_sent,
    typescript_client,
)


def test_the_worked_vector_verifies() -> None:
    vector = json.loads(SIGNING_VECTOR_PATH.read_text(encoding="utf-8"))
    canonical = jcs(received_content(vector["envelope_unsigned"].encode()))
    assert canonical.decode() == vector["canonical_utf8"]
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(vector["public_key_base64"]))
    public_key.verify(base64.b64decode(vector["signature_base64"]), canonical)
    keyring = Keyring(
        {
            vector["key_id"]: KeyEntry(
                role=KeyRole.TENANT, principal="mois", public_key=vector["public_key_base64"]
            )
        }
    )
    event = JobRequestedEvent.from_received(vector["envelope_signed"].encode())
    assert keyring.refusal(event, KeyRole.TENANT, "mois") is None
    assert event.data.expected_hours == 2.0 and event.data.name.startswith("민원")


def test_the_worked_vector_verifies_in_typescript_too() -> None:
    """The second-language client computes the same RFC 8785 bytes and the same Ed25519 signature."""
    result = subprocess.run(
        typescript_client("vector", str(SIGNING_VECTOR_PATH)),
        cwd=TYPESCRIPT_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    vector = json.loads(SIGNING_VECTOR_PATH.read_text(encoding="utf-8"))
    assert json.loads(result.stdout)["canonical_sha256"] == vector["canonical_sha256"]


@st.composite
def written_elsewhere(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A request as a client in another language might write it: any member order, `2` or `2.0`, UTC as
    `Z` or `+00:00`, with or without a fraction of a second, an id in either case, escapes or raw text,
    defaults sent or left out."""
    now = datetime.now(UTC).replace(microsecond=draw(st.sampled_from([0, 120000, 123456])))
    precision = draw(st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
    utc = draw(st.sampled_from(["Z", "+00:00"]))

    def instant(moment: datetime) -> str:  # JavaScript's toISOString writes milliseconds and Z
        return moment.isoformat(timespec=precision).replace("+00:00", utc)

    envelope_id = str(uuid.uuid4())
    data: dict[str, Any] = {
        "tenant_id": "mois",
        "client_request_id": uuid.uuid4().hex,
        "name": draw(st.sampled_from(["민원 요약", "fine-tune \u2014 v2", 'a "quoted" name'])),
        "kind": "training",
        "gpu_count": 8,
        "expected_hours": draw(st.sampled_from([2, 2.0, 0.5, 1e-3, 1.25])),
        "deadline": instant(now + timedelta(days=30)),
    }
    if draw(st.booleans()):
        data |= {"datasets": [], "preferred_regions": [], "priority": "normal", "max_attempts": 1}
    document = {
        "id": envelope_id.upper() if draw(st.booleans()) else envelope_id,
        "type": "jobs.requested",
        "source": "tenant/mois",
        "subject": "mois",
        "time": instant(now),
        "schema_version": "1.5",
        "data": data,
    }
    order = draw(st.randoms(use_true_random=False))
    members = list(document.items())
    order.shuffle(members)
    text = json.dumps(
        dict(members), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2]))
    )
    return json.loads(text), text


@settings(max_examples=60, deadline=None)
@given(written=written_elsewhere())
def test_a_signature_over_the_envelope_as_sent_verifies_however_it_is_written(
    written: tuple[dict[str, Any], str],
) -> None:
    document, text = written
    event = JobRequestedEvent.from_received(signed_as_sent(document, text))
    assert KEYRING.refusal(event, KeyRole.TENANT, "mois") is None


@settings(max_examples=20, deadline=None)
@given(written=written_elsewhere())
def test_a_value_changed_after_signing_is_refused(written: tuple[dict[str, Any], str]) -> None:
    document, text = written
    sent = signed_as_sent(document, text).decode()
    changed = sent.replace('"gpu_count": 8', '"gpu_count": 9')
    assert changed != sent
    event = JobRequestedEvent.from_received(changed.encode())
    assert "bad signature" in (KEYRING.refusal(event, KeyRole.TENANT, "mois") or "")


def test_a_member_sent_twice_is_refused_whatever_the_parser_would_keep() -> None:
    event = request_event("mois")
    text = event.model_dump_json().replace('"gpu_count":8', '"gpu_count":8,"gpu_count":640')
    # One reading decides for the signature and the model: refused before either, with the reason.
    with pytest.raises(UnreadableJson, match="'gpu_count' appears twice"):
        JobRequestedEvent.from_received(text.encode())


def test_the_form_before_jcs_is_accepted_only_at_the_version_that_brought_jcs() -> None:
    # 2.0 hours: the old form wrote `2.0`, RFC 8785 writes `2`, so the two forms differ.
    event = request_event("mois", expected_hours=2)
    signer = TEST_KEYS.tenants["mois"]
    assert event.signature is not None
    signature = event.signature.model_copy(update={"value": signer.signature_over(pre_jcs_form(event))})
    old = event.model_copy(update={"signature": signature})
    assert JobRequestedEvent.accepts_pre_jcs_signatures()
    assert KEYRING.refusal(old, KeyRole.TENANT, "mois") is None

    class NextVersion(JobRequestedEvent):
        SCHEMA_VERSION: ClassVar[str] = "1.6"

    later = NextVersion.model_validate(old.model_dump())
    assert "bad signature" in (KEYRING.refusal(later, KeyRole.TENANT, "mois") or "")
    assert KEYRING.refusal(NextVersion.model_validate(event.model_dump()), KeyRole.TENANT, "mois") is None


def test_a_signature_survives_reformatting_but_not_a_changed_value() -> None:
    event = request_event("mois")
    document = json.loads(event.model_dump_json())
    # The same event as another producer might write it: keys in reverse order, indented.
    reordered = json.dumps(dict(reversed(list(document.items()))), indent=2)
    assert KEYRING.refusal(JobRequestedEvent.model_validate_json(reordered), KeyRole.TENANT, "mois") is None
    document["data"]["gpu_count"] += 1
    changed = JobRequestedEvent.model_validate_json(json.dumps(document))
    assert "bad signature" in (KEYRING.refusal(changed, KeyRole.TENANT, "mois") or "")


def test_keys_made_on_the_command_line_sign_and_verify_and_are_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "keys",
        "new",
        "--dir",
        str(tmp_path),
        "--key-id",
        "mois-2026",
        "--role",
        "tenant",
        "--principal",
        "mois",
    ]
    assert main(args) == 0
    assert (tmp_path / "mois-2026.key").stat().st_mode & 0o777 == 0o600
    original = (tmp_path / "mois-2026.key").read_bytes()
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    assert (tmp_path / "mois-2026.key").read_bytes() == original
    with pytest.raises(FileExistsError):
        make_key(tmp_path, "mois-2026", KeyRole.TENANT, "mois")
    signer = make_key(tmp_path, "mois-2027", KeyRole.TENANT, "mois")
    keyring = Keyring.load(tmp_path / "keyring.json")
    assert set(keyring.entries) == {"mois-2026", "mois-2027"}
    event = signer.sign(request_event("mois").model_copy(update={"signature": None}))
    assert keyring.refusal(event, KeyRole.TENANT, "mois") is None
    assert "not in the keyring" in (KEYRING.refusal(event, KeyRole.TENANT, "mois") or "")
    # Signed again by a key this keyring does not hold.
    refusal = keyring.refusal(TEST_KEYS.factory.sign(event), KeyRole.TENANT, "mois")
    assert refusal == "unknown key 'factory-demo': it is not in the keyring"


def test_a_signer_loaded_from_its_pem_file_signs_what_its_public_key_verifies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "keys" / "factory" / "k.pem"  # folders made as needed
    write_private_key(key, path)
    assert path.stat().st_mode & 0o777 == 0o600
    signer = Signer.load(path, "k-1")
    assert signer.key_id == "k-1"
    signature = base64.b64decode(signer.signature_over(b"form"))
    key.public_key().verify(signature, b"form")  # raises if it does not verify


def test_a_pem_file_that_is_not_an_ed25519_key_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(ValueError, match=r"ec\.pem is not an Ed25519 private key"):
        Signer.load(path, "k-1")


def test_the_author_of_an_invalid_envelope_is_a_known_key_of_the_role_whose_signature_verifies() -> None:
    document = {"id": str(uuid.uuid4()), "type": "jobs.requested", "data": {"gpu_count": "eight"}}
    content = json.loads(signed_as_sent(document, tenant="mois"))
    entry = KEYRING.author(content, KeyRole.TENANT)
    assert entry is not None and entry.principal == "mois"
    # The same signature is no one's for another role, nor under a key id the keyring lacks or is not text.
    assert KEYRING.author(content, KeyRole.FACTORY) is None
    signature = content["signature"]
    for key_id in ["nobody-knows", ["mois"], 7]:
        assert (
            KEYRING.author({**content, "signature": {**signature, "key_id": key_id}}, KeyRole.TENANT) is None
        )
    assert KEYRING.author({**content, "signature": {**signature, "value": 7}}, KeyRole.TENANT) is None
    assert KEYRING.author({**content, "data": {"gpu_count": 9}}, KeyRole.TENANT) is None
    assert Keyring.empty().author(content, KeyRole.TENANT) is None
    assert Keyring.empty().entries == {}


def test_a_number_that_is_not_finite_is_refused_saying_so() -> None:
    for literal in ["NaN", "Infinity", "-Infinity"]:
        with pytest.raises(
            UnsignableContent, match=f"^{literal} is not a finite number: every number must be finite$"
        ):
            received_content(f'{{"a": {literal}}}'.encode())


def test_what_is_not_a_json_object_is_refused_saying_so() -> None:
    with pytest.raises(UnsignableContent, match=r"^the envelope is not JSON: Expecting property name"):
        received_content(b"{")
    for value in [b"[1]", b"7", b'"envelope"']:
        with pytest.raises(UnsignableContent, match=r"^an envelope is a JSON object$"):
            received_content(value)


def test_a_made_factory_key_speaks_for_its_sites(tmp_path: Path) -> None:
    make_key(tmp_path, "f-1", KeyRole.FACTORY, "acme", sites=["site-a", "site-b"])
    entry = Keyring.load(tmp_path / "keyring.json").entries["f-1"]
    assert (entry.role, entry.principal, entry.sites) == (KeyRole.FACTORY, "acme", ["site-a", "site-b"])
    with pytest.raises(FileExistsError, match=r"f-1\.key exists"):
        make_key(tmp_path, "f-1", KeyRole.FACTORY, "acme")


def test_a_received_envelopes_signed_form_is_computed_once_and_is_what_was_signed() -> None:
    signed = request_event("hanbit-ai")
    received = JobRequestedEvent.from_received(signed.model_dump_json().encode())
    first = signed_form(received)
    assert signed_form(received) is first  # the reuse digest does not compute it again
    content = json.loads(signed.model_dump_json())
    content.pop("signature")
    assert first == jcs(content)
    assert KEYRING.refusal(received, KeyRole.TENANT, "hanbit-ai") is None
    # A changed copy is not what was received: its form is its own.
    changed = received.model_copy(update={"subject": "mois"})
    assert signed_form(changed) != first
