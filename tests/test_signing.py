"""Signed envelopes: what a signature covers, and the keys the command line makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.events import JobRequestedEvent
from services.shared.signing import Keyring, KeyRole, make_key
from sovereign.cli import main
from tests.conftest import KEYRING, TEST_KEYS, request_event


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
