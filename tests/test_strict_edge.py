"""What outside parties send is read once and strictly: one reading of the bytes decides for the signature
and the model, nothing is coerced, any finite number is taken where a float is, JavaScript's number forms
verify, and whatever cannot be read is refused with a sentence that says why."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.envelope import UnreadableJson, read_json
from contracts.events import JobRequestedEvent
from contracts.limits import MAX_JSON_DEPTH
from services.shared.domain.signing import KeyRole, SignatureRefused, received_content
from tests.conftest import (
    KEYRING,
    TEST_KEYS,
    TYPESCRIPT_CLIENT,
    request_event,
    signed_as_sent,
    typescript_client,
)


def unsigned_document(**data: Any) -> dict[str, Any]:
    document = request_event("mois").model_dump(mode="json", exclude={"signature"})
    document["data"].update(data)
    return document


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("gpu_count", True),
        ("gpu_count", "8"),
        ("gpu_count", 8.0),
        ("expected_hours", "1.5"),
        ("generative_ai", 1),
    ],
)
def test_a_value_of_another_type_is_refused_not_coerced(member: str, value: Any) -> None:
    sent = signed_as_sent(unsigned_document(**{member: value}))
    with pytest.raises(ValidationError) as refused:
        JobRequestedEvent.from_received(sent)
    assert [error["loc"] for error in refused.value.errors()] == [("data", member)]


@pytest.mark.parametrize("literal", ["5000000000000000000", "9007199254740993", "5e18", "1e300", "12"])
def test_any_finite_number_is_taken_where_a_float_is(literal: str) -> None:
    document = unsigned_document(training_ops=0)
    text = json.dumps(document).replace('"training_ops": 0', f'"training_ops": {literal}')
    event = JobRequestedEvent.from_received(signed_as_sent(document, text))
    assert event.data.training_ops == float(literal)


def test_an_integer_past_what_every_reader_keeps_is_refused_where_an_integer_is() -> None:
    document = unsigned_document()
    text = json.dumps(document).replace('"gpu_count": 8', '"gpu_count": 9007199254740993')
    with pytest.raises(ValidationError) as refused:
        JobRequestedEvent.from_received(text.encode())
    assert [error["loc"] for error in refused.value.errors()] == [("data", "gpu_count")]


@pytest.mark.parametrize("training_ops", ["5e18", "2**53 + 1", "1e27"])
def test_what_a_javascript_client_signs_verifies(training_ops: str, tmp_path: Any) -> None:
    """The TypeScript client reads the envelope as JavaScript does (doubles), signs its RFC 8785 form and
    sends JSON.stringify's text: 5e18 as 5000000000000000000, 2**53 + 1 as 9007199254740992."""
    document = unsigned_document(training_ops=0)
    number = str(2**53 + 1) if training_ops == "2**53 + 1" else training_ops
    text = json.dumps(document).replace('"training_ops": 0', f'"training_ops": {number}')
    signer = TEST_KEYS.tenants["mois"]
    result = subprocess.run(
        typescript_client("sign"),
        cwd=TYPESCRIPT_CLIENT,
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "TENANT_KEY_ID": signer.key_id,
            "TENANT_KEY_FILE": str(TEST_KEYS.private_key(signer)),
        },
    )
    assert result.returncode == 0, result.stderr
    sent = result.stdout.strip().encode()
    event = JobRequestedEvent.from_received(sent)
    assert KEYRING.refusal(event, KeyRole.TENANT, "mois") is None
    assert event.data.training_ops == float(eval(training_ops))


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"\xef\xbb\xbf{}", "starts with a byte-order mark"),
        (b'{"a": "\xff"}', "is not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "is not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (
            b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
            f"nested deeper than {MAX_JSON_DEPTH}",
        ),
        (b'{"a": 1' + b"0" * 400 + b"}", "is not a finite number"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "is not a finite number"),
        (b'{"a": 1e999}', "is not a finite number"),
        (b'{"a": 1, "a": 2}', "'a' appears twice"),
        (b"[1]", "an envelope is a JSON object"),
    ],
)
def test_what_cannot_be_read_is_refused_alike_by_the_model_and_the_signature_check(
    sent: bytes, reason: str
) -> None:
    with pytest.raises(UnreadableJson, match=reason):
        JobRequestedEvent.from_received(sent)
    with pytest.raises(SignatureRefused, match=reason):
        received_content(sent)


def test_an_envelope_nested_to_the_bound_is_read() -> None:
    assert read_json(b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}")


@pytest.mark.parametrize(
    "envelope_id",
    [
        "{6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11}",
        "urn:uuid:6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11",
        "6f1c2a4e8d0b4c559a573b7d2f0e9c11",
    ],
)
def test_an_envelope_id_in_another_form_is_refused(envelope_id: str) -> None:
    document = unsigned_document()
    document["id"] = envelope_id
    with pytest.raises(ValidationError) as refused:
        JobRequestedEvent.from_received(signed_as_sent(document))
    assert [error["loc"] for error in refused.value.errors()] == [("id",)]
    assert "8-4-4-4-12" in refused.value.errors()[0]["msg"]


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    sent=st.one_of(
        st.binary(max_size=300),
        json_text.map(lambda value: json.dumps(value).encode()),
        st.integers(0, 3000).map(lambda depth: b'{"a":' + b"[" * depth + b"]" * depth + b"}"),
    )
)
def test_any_bytes_are_read_or_refused_with_a_reason(sent: bytes) -> None:
    try:
        content = read_json(sent)
    except UnreadableJson as error:
        assert str(error)
        return
    assert isinstance(content, dict)
