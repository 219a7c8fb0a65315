"""`sovereign contracts`: write the pinned JSON Schemas and the AsyncAPI document of every service."""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from contracts.events import EVENT_MODELS
from contracts.pinning import ASYNCAPI_DIR, SCHEMA_DIR, current_schema, export_schemas, render, schema_path
from services.shared.runtime import Service
from services.shared.settings import Settings


def asyncapi_documents() -> dict[str, dict[str, Any]]:
    """The AsyncAPI 3.0 document FastStream generates from each service's subscribers and publishers."""
    from sovereign.cli import SERVICES

    documents: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        settings = replace(Settings(), data_dir=Path(scratch), database_url=None)
        for name, build in SERVICES.items():
            service = build(settings)
            spec = AsyncAPI(
                service.broker, title=f"sovereign {name}", version="1.0.0", schema_version="3.0.0"
            )
            document = one_event_per_topic(json.loads(spec.to_specification().to_json()), service)
            documents[name] = with_tenant_parameter(document)
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
    ASYNCAPI_DIR.mkdir(parents=True, exist_ok=True)
    for service, document in documents.items():
        asyncapi_path(service).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 1 if result.refused else 0
