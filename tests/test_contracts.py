"""Contracts: pinned schemas, golden examples, compatibility within a major version, the AsyncAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import jsonschema
import pytest
from pydantic import Field

from contracts import EVENT_MODELS
from contracts.compatibility import breaking_changes
from contracts.envelope import Contract, Event
from contracts.events import JobRequest, RejectionCode
from contracts.pinning import (
    EXAMPLES_DIR,
    SIGNING_VECTOR_PATH,
    current_schema,
    export_schemas,
    render,
    schema_path,
)
from services.shared.settings import REPO_ROOT
from sovereign.contracts_export import asyncapi_documents, asyncapi_path, render_vector


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_schema_matches_its_pinned_file(event_type: str) -> None:
    model = EVENT_MODELS[event_type]
    pinned = schema_path(model)
    assert pinned.exists(), f"run `sovereign contracts` to pin {event_type}"
    assert render(current_schema(model)) == pinned.read_text(), (
        f"{event_type} drifted from {pinned.name}; run `sovereign contracts` (it refuses breaking changes)"
    )


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_golden_example_validates_against_model_and_pinned_schema(event_type: str) -> None:
    example = json.loads((EXAMPLES_DIR / f"{event_type}.json").read_text())
    model = EVENT_MODELS[event_type]
    event = model.model_validate(example)
    assert event.type == event_type
    pinned = json.loads(schema_path(model).read_text())
    jsonschema.Draft202012Validator(pinned).validate(example)


def test_the_drift_check_notices_a_changed_model() -> None:
    class Changed(JobRequest):
        cost_centre: str = ""

    class ChangedEvent(Event[Changed]):
        type: Literal["jobs.requested"] = "jobs.requested"

    pinned = schema_path(EVENT_MODELS["jobs.requested"]).read_text()
    assert render(current_schema(ChangedEvent)) != pinned


# The compatibility check, on small models whose changes are known.
class Base(Contract):
    name: str
    count: int
    grade: Literal["low", "high"]
    note: str | None = None


class RemovedField(Contract):
    name: str
    grade: Literal["low", "high"]
    note: str | None = None


class RetypedField(Contract):
    name: str
    count: str
    grade: Literal["low", "high"]
    note: str | None = None


class NewRequiredField(Contract):
    name: str
    count: int
    grade: Literal["low", "high"]
    note: str | None = None
    region: str


class NarrowedEnum(Contract):
    name: str
    count: int
    grade: Literal["low"]
    note: str | None = None


class CompatibleAddition(Contract):
    name: str
    count: float  # widened
    grade: Literal["low", "high", "medium"]  # a value added
    note: str | None = None
    region: str | None = None  # new and optional
    tags: list[str] = Field(default_factory=list)


def problems(new: type[Contract]) -> list[str]:
    return breaking_changes(Base.model_json_schema(), new.model_json_schema())


def test_compatibility_catches_a_removed_field() -> None:
    assert problems(RemovedField) == ["count: field removed"]


def test_compatibility_catches_a_changed_type() -> None:
    [problem] = problems(RetypedField)
    assert problem.startswith("count: type changed")


def test_compatibility_catches_a_new_required_field() -> None:
    assert problems(NewRequiredField) == ["region: field is newly required"]


def test_compatibility_catches_a_removed_enum_value() -> None:
    [problem] = problems(NarrowedEnum)
    assert problem.startswith("grade: type changed") and "'high'" in problem


def test_compatibility_allows_additions_and_widening() -> None:
    assert problems(CompatibleAddition) == []


def test_compatibility_looks_inside_nested_models() -> None:
    class Inner(Contract):
        value: int

    class Outer(Contract):
        inner: Inner
        items: list[Inner]

    class InnerChanged(Contract):
        value: str

    class OuterChanged(Contract):
        inner: InnerChanged
        items: list[InnerChanged]

    found = breaking_changes(Outer.model_json_schema(), OuterChanged.model_json_schema())
    assert any(p.startswith("inner.value: type changed") for p in found)
    assert any(p.startswith("items[].value: type changed") for p in found)


class PayloadV1(Contract):
    name: str
    count: int


class PayloadV2(Contract):
    name: str


def events(major: int, payload: type[Contract]) -> dict[str, type[Event]]:  # type: ignore[type-arg]
    class Probe(Event[payload]):  # type: ignore[valid-type]
        SCHEMA_VERSION: ClassVar[str] = f"{major}.0"
        type: Literal["probe.event"] = "probe.event"

    return {"probe.event": Probe}


def test_export_refuses_a_breaking_change_within_a_major_version(tmp_path: Path) -> None:
    assert export_schemas(events(1, PayloadV1), tmp_path).written == [tmp_path / "probe.event.v1.json"]
    pinned = (tmp_path / "probe.event.v1.json").read_text()
    result = export_schemas(events(1, PayloadV2), tmp_path)
    assert result.refused == {"probe.event": ["data.count: field removed"]}
    assert (tmp_path / "probe.event.v1.json").read_text() == pinned


def test_export_accepts_a_breaking_change_with_a_new_major_version(tmp_path: Path) -> None:
    export_schemas(events(1, PayloadV1), tmp_path)
    result = export_schemas(events(2, PayloadV2), tmp_path)
    assert result.refused == {}
    assert (tmp_path / "probe.event.v1.json").exists() and (tmp_path / "probe.event.v2.json").exists()


def test_committed_asyncapi_documents_match_the_code() -> None:
    for service, document in asyncapi_documents().items():
        committed = json.loads(asyncapi_path(service).read_text())
        assert committed == document, f"AsyncAPI of {service} is stale; run `sovereign contracts`"
        assert document["asyncapi"] == "3.0.0"


def test_the_signing_vector_is_what_the_code_writes() -> None:
    assert SIGNING_VECTOR_PATH.read_text(encoding="utf-8") == render_vector()


def test_the_integration_guide_names_every_rejection_code_and_every_signed_topics_version() -> None:
    guide = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"| `{code.value}` |" in guide for code in RejectionCode)
    for event_type, model in EVENT_MODELS.items():
        if model.JCS_SIGNATURES_SINCE is not None:
            assert f"`{event_type}` {model.JCS_SIGNATURES_SINCE}" in guide
