"""`sovereign contracts`: write the pinned JSON Schemas and the AsyncAPI document of every service."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from faststream.specification import AsyncAPI

from contracts.events import EVENT_MODELS
from contracts.pinning import (
    ASYNCAPI_DIR,
    SCHEMA_DIR,
    SIGNING_VECTOR_PATH,
    current_schema,
    export_schemas,
    render,
    schema_path,
)
from services.registry import SERVICES
from services.shared.domain.signing import Signer, jcs, public_key_text, received_content
from services.shared.runtime import TENANT_STREAMS_CHANNEL, Service
from services.shared.settings import Settings
from sovereign.options import Commands

# The vector's key is published with it: a test key that no keyring of a real marketplace may hold.
VECTOR_KEY_SEED = hashlib.sha256(b"sovereign marketplace signing vector: a published test key").digest()
VECTOR_KEY_ID = "vector-tenant-mois"
# A request written the way other languages write JSON: a member order of its own, "\u" escapes, an
# upper-case id, `2` for a float, millisecond fractions, `+00:00` and `Z` for UTC, defaults left out.
VECTOR_UNSIGNED = (
    '{"schema_version": "1.5", "type": "jobs.requested", "id": "0E4B6C1A-7F3D-4B2E-9C8A-5D6E7F809A1B",\n'
    ' "source": "tenant/mois", "subject": "mois", "time": "2026-12-03T03:00:00.000Z",\n'
    ' "data": {"tenant_id": "mois", "client_request_id": "vector-1",\n'
    '  "name": "\\ubbfc\\uc6d0 \\uc694\\uc57d fine-tune \u2014 \\"v2\\"", "kind": "fine_tuning",\n'
    '  "gpu_count": 8, "expected_hours": 2, "deadline": "2027-03-01T00:00:00.000+00:00",\n'
    '  "csap_grade": "medium", "datasets": [{"name": "complaints-2026", "n2sf_grade": "S"}]}}'
)


def signing_vector() -> dict[str, Any]:
    """The worked example: sign the RFC 8785 form of the envelope as it will be sent, without `signature`,
    then add the signature as a member of the envelope."""
    signer = Signer(VECTOR_KEY_ID, Ed25519PrivateKey.from_private_bytes(VECTOR_KEY_SEED))
    canonical = jcs(received_content(VECTOR_UNSIGNED.encode()))
    signature = signer.signature_over(canonical)
    signed = (
        VECTOR_UNSIGNED.removesuffix("}")
        + f',\n "signature": {{"key_id": "{VECTOR_KEY_ID}", "value": "{signature}"}}}}'
    )
    return {
        "about": (
            "A jobs.requested envelope signed as every tenant signs: Ed25519 over the RFC 8785 (JCS) form "
            "of the envelope as sent, without its `signature` member. The private key is published for "
            "this example only; the envelope's time is in the past, so a marketplace would refuse it as "
            "stale after checking its signature."
        ),
        "key_id": VECTOR_KEY_ID,
        "private_key_seed_base64": base64.b64encode(VECTOR_KEY_SEED).decode(),
        "public_key_base64": public_key_text(signer.key.public_key()),
        "envelope_unsigned": VECTOR_UNSIGNED,
        "canonical_utf8": canonical.decode(),
        "canonical_sha256": hashlib.sha256(canonical).hexdigest(),
        "signature_base64": signature,
        "envelope_signed": signed,
    }


def render_vector() -> str:
    return json.dumps(signing_vector(), indent=2, ensure_ascii=False) + "\n"


def asyncapi_documents() -> dict[str, dict[str, Any]]:
    """The AsyncAPI 3.0 document FastStream generates from each service's subscribers and publishers."""
    documents: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        settings = replace(Settings(), data_dir=Path(scratch), database_url=None)
        for name, entry in SERVICES.items():
            service = entry.build(settings)
            spec = AsyncAPI(
                service.broker,
                title=f"sovereign {name}",
                version="1.0.0",
                description=INTEGRATION,
                schema_version="3.0.0",
            )
            document = one_event_per_topic(json.loads(spec.to_specification().to_json()), service)
            documents[name] = with_channel_notes(with_tenant_parameter(document))
            service.engine.dispose()
    return documents


def one_event_per_topic(document: dict[str, Any], service: Service) -> dict[str, Any]:
    """A service consumes all its topics with one batch subscriber, so FastStream documents each consumed
    topic's payload as an array of any of the service's events, and names its receive operations after the
    subscription. On the wire each message of a topic is one event of that topic's model: point each
    consumed topic's payload at that schema, and name each receive operation after its channel."""
    components = document.get("components", {})
    for channel_id, channel in document.get("channels", {}).items():
        consumed = service.handlers.get(channel.get("address", ""))
        if consumed is None:
            continue
        for reference in channel.get("messages", {}).values():
            message = components["messages"][reference["$ref"].rpartition("/")[2]]
            message["payload"] = {"$ref": f"#/components/schemas/{consumed[0].__name__}"}
        operations = document.get("operations", {})
        if f"{channel_id}Subscribe" in operations:
            operations[channel_id] = operations.pop(f"{channel_id}Subscribe")
    schemas = components.get("schemas", {})
    for name in [name for name in schemas if name.endswith(":Message:Payload")]:
        del schemas[name]
    return document


def with_tenant_parameter(document: dict[str, Any]) -> dict[str, Any]:
    """AsyncAPI 3 wants each parameter of a channel's address declared: the tenants' streams have one."""
    for channel in document.get("channels", {}).values():
        if "{tenant_id}" in channel.get("address", ""):
            channel["parameters"] = {
                "tenant_id": {"description": "A tenant of the registry; each has a stream of its own."}
            }
    return document


# The integration guide's essentials, for readers of the AsyncAPI documents; the README has it in full.
INTEGRATION = (
    "Every record's value is an envelope (id, type, source, subject, time, schema_version, data, signature) "
    "as UTF-8 JSON. A tenant writes jobs.requested and jobs.cancel, keyed by the job id, "
    "uuid5(6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11, '<tenant_id>/<client_request_id>'), with source "
    "'tenant/<tenant_id>', subject the tenant id, time the signing time, and signature {key_id, value}: "
    "Ed25519 over the RFC 8785 (JCS) form of the envelope as sent without its signature member "
    "(contracts/signing-vector.json is a worked example). It reads only tenant.<tenant_id>, in groups "
    "named tenant.<tenant_id>.<anything>. Refusals of what it sends arrive there as jobs.rejected (scope "
    "job or envelope, with field_errors); unsigned or badly signed records go to <topic>.dlq unanswered. "
    "See the README's 'Integrating as a tenant, in any language' for the ordering, the codes and the "
    "settings."
)
CHANNEL_NOTES = {
    "jobs.requested": "Written by tenants: a job request, keyed by its job id, signed by the tenant's key.",
    "jobs.cancel": "Written by tenants: a cancel, keyed by the job id it names, signed by the tenant's key.",
    TENANT_STREAMS_CHANNEL: (
        "Keyed by the job id (the tenant id for billing.usage, invoices.issued and billing.budget); the "
        "event's type is in its envelope and in the event_type header. Delivered at least once: "
        "deduplicate by envelope id. One service's events under one key keep their order; different "
        "services' do not (jobs.billed may arrive before jobs.completed)."
    ),
}


def with_channel_notes(document: dict[str, Any]) -> dict[str, Any]:
    for channel in document.get("channels", {}).values():
        note = CHANNEL_NOTES.get(channel.get("address", ""))
        if note is not None:
            channel["description"] = " ".join(filter(None, (channel.get("description"), note)))
    return document


def asyncapi_path(service: str) -> Path:
    return ASYNCAPI_DIR / f"{service}.json"


def export_contracts(check: bool) -> int:
    drift: list[str] = []
    for event_type, model in EVENT_MODELS.items():
        path = schema_path(model)
        if not path.exists() or render(json.loads(path.read_text())) != render(current_schema(model)):
            drift.append(f"schema of {event_type} differs from {path.relative_to(SCHEMA_DIR.parent.parent)}")
    documents = asyncapi_documents()
    for service, document in documents.items():
        path = asyncapi_path(service)
        if not path.exists() or json.loads(path.read_text()) != document:
            drift.append(f"AsyncAPI of {service} differs from {path.relative_to(ASYNCAPI_DIR.parent.parent)}")
    if not SIGNING_VECTOR_PATH.exists() or SIGNING_VECTOR_PATH.read_text() != render_vector():
        drift.append("the signing vector differs from contracts/signing-vector.json")
    if check:
        for line in drift:
            print(line)
        return 1 if drift else 0
    result = export_schemas()
    for event_type, problems in result.refused.items():
        print(
            f"refused: {event_type} has breaking changes within major version; bump SCHEMA_VERSION's major "
            f"to publish a new schema file:",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    for path in result.written:
        print(f"wrote {path}")
    SIGNING_VECTOR_PATH.write_text(render_vector())
    ASYNCAPI_DIR.mkdir(parents=True, exist_ok=True)
    for service, document in documents.items():
        asyncapi_path(service).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 1 if result.refused else 0


def register(commands: Commands) -> None:
    contracts = commands.add_parser("contracts", help="export pinned JSON Schemas and AsyncAPI documents")
    contracts.add_argument("--check", action="store_true", help="only report drift; write nothing")
    contracts.set_defaults(handler=_contracts)


def _contracts(args: argparse.Namespace) -> int:
    return export_contracts(check=args.check)
