"""Pinned JSON Schemas: one file per event type and major version, written only by a compatible export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contracts.compatibility import Schema, breaking_changes
from contracts.envelope import Event
from contracts.events import EVENT_MODELS

CONTRACTS_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = CONTRACTS_DIR / "schemas"
EXAMPLES_DIR = CONTRACTS_DIR / "examples"
ASYNCAPI_DIR = CONTRACTS_DIR / "asyncapi"
# A worked example of an envelope signature: the envelope as sent, its RFC 8785 form, the key, the signature.
SIGNING_VECTOR_PATH = CONTRACTS_DIR / "signing-vector.json"


def schema_path(model: type[Event], schema_dir: Path = SCHEMA_DIR) -> Path:  # type: ignore[type-arg]
    return schema_dir / f"{model.model_fields['type'].default}.v{model.major_version()}.json"


def current_schema(model: type[Event]) -> Schema:  # type: ignore[type-arg]
    return model.model_json_schema(mode="validation")


def render(schema: Schema) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class ExportResult:
    written: list[Path]
    refused: dict[str, list[str]]


def export_schemas(
    models: dict[str, type[Event]] = EVENT_MODELS,  # type: ignore[type-arg]
    schema_dir: Path = SCHEMA_DIR,
) -> ExportResult:
    """Write every model's schema, refusing any breaking change within the pinned major version."""
    schema_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    refused: dict[str, list[str]] = {}
    for event_type, model in models.items():
        path = schema_path(model, schema_dir)
        schema = current_schema(model)
        if path.exists():
            pinned = json.loads(path.read_text())
            problems = breaking_changes(pinned, schema)
            if problems:
                refused[event_type] = problems
                continue
            if render(pinned) == render(schema):
                continue
        path.write_text(render(schema))
        written.append(path)
    return ExportResult(written=written, refused=refused)
