"""A batch of events in one transaction: a bad event is refused alone, the rest commit; actions deferred to
the commit run once, and not for an event whose work was rolled back."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from sqlalchemy import event as sqlalchemy_event
from sqlmodel import Session, col, select

from contracts.events import JobRequestedEvent
from contracts.limits import BROKER_MESSAGE_MAX_BYTES, MAX_ENVELOPE_BYTES
from services.shared.batch import PoisonMessage, handle_batch, oversized, parse_records, refusal_reason
from services.shared.db import create_service_engine, defer_to_commit, table_of
from services.shared.inbox import ProcessedEvent, claim_event
from services.shared.outbox import OutboxMessage, add_to_outbox
from tests.conftest import request_event


def record(offset: int, value: bytes, topic: str = "jobs.requested") -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, value=value, key=None, headers=[])


def test_records_that_are_too_big_not_json_or_not_the_schema_are_refused_alone() -> None:
    good = request_event("mois")
    records = [
        record(0, good.model_dump_json().encode()),
        record(1, b"not json"),
        record(2, b'{"id": "x"}'),
        record(3, b" " * (MAX_ENVELOPE_BYTES + 1)),
    ]
    events, refused = parse_records(JobRequestedEvent, records)
    assert [(r.offset, e) for r, e in events] == [(0, good)]
    assert [r.offset for r, _ in refused] == [1, 2, 3]
    assert isinstance(refused[2][1], PoisonMessage)


def test_what_the_services_write_is_held_to_the_brokers_limit_not_an_envelopes() -> None:
    """A decision over an outside envelope's limit is still a valid decision: governance logs it."""
    assert oversized(record(0, b" " * (MAX_ENVELOPE_BYTES + 1), "policy.decisions")) is None
    assert oversized(record(0, b" " * (MAX_ENVELOPE_BYTES + 1), "tenant.mois")) is None
    too_big = oversized(record(0, b" " * (BROKER_MESSAGE_MAX_BYTES + 1), "policy.decisions"))
    assert too_big is not None and f"{BROKER_MESSAGE_MAX_BYTES}-byte limit" in str(too_big)
    for topic in ("jobs.requested", "capacity.offered", "usage.reported", "policy.published"):
        refused = oversized(record(0, b" " * (MAX_ENVELOPE_BYTES + 1), topic))
        assert refused is not None and f"{MAX_ENVELOPE_BYTES}-byte limit" in str(refused)


def test_a_failing_event_rolls_back_alone_and_its_deferred_action_with_it(tmp_path: Path) -> None:
    engine = create_service_engine(
        f"sqlite:///{tmp_path / 'b.db'}", "b", [table_of(ProcessedEvent), table_of(OutboxMessage)]
    )
    events = [request_event("mois") for _ in range(4)]
    poison = events[2]
    ran: list[str] = []

    def handle(session: Session, event: JobRequestedEvent) -> None:
        claim_event(session, "c", event)
        add_to_outbox(session, event, "k")
        defer_to_commit(session, f"after-{event.id}", lambda _: ran.append(str(event.id)))
        defer_to_commit(session, "once", lambda _: ran.append("once"))
        if event is poison:
            raise PoisonMessage("refused")

    refused = handle_batch(engine, handle, [(record(i, b""), e) for i, e in enumerate(events)])
    assert [(r.offset, type(error)) for r, error in refused] == [(2, PoisonMessage)]
    with Session(engine) as session:
        claimed = {row.event_id for row in session.exec(select(ProcessedEvent))}
        published = [
            row.headers["event_id"]
            for row in session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))
        ]
    kept = [str(e.id) for e in events if e is not poison]
    assert claimed == set(kept)
    assert published == kept, "outbox rows keep their order; the refused event's row is gone"
    assert sorted(ran) == sorted([*kept, "once"])


def test_a_failed_commit_is_retried_one_event_per_transaction(tmp_path: Path) -> None:
    engine = create_service_engine(f"sqlite:///{tmp_path / 'b.db'}", "b", [table_of(ProcessedEvent)])
    events = [request_event("mois") for _ in range(3)]
    failing = events[1]

    def handle(session: Session, event: JobRequestedEvent) -> None:
        claim_event(session, "c", event)
        if event is failing:
            # Fails only when the transaction commits, after every event was applied.
            defer_to_commit(session, "check", lambda _: (_ for _ in ()).throw(RuntimeError("at commit")))

    refused = handle_batch(engine, handle, [(record(i, b""), e) for i, e in enumerate(events)])
    assert [(r.offset, str(error)) for r, error in refused] == [(1, "at commit")]
    with Session(engine) as session:
        claimed = {row.event_id for row in session.exec(select(ProcessedEvent))}
    assert claimed == {str(events[0].id), str(events[2].id)}


def test_a_batch_without_a_bad_event_takes_no_savepoint_and_one_outbox_insert(tmp_path: Path) -> None:
    engine = create_service_engine(
        f"sqlite:///{tmp_path / 'b.db'}", "b", [table_of(ProcessedEvent), table_of(OutboxMessage)]
    )
    statements: list[str] = []
    sqlalchemy_event.listen(
        engine, "before_cursor_execute", lambda _c, _cu, statement, *_: statements.append(statement)
    )
    events = [request_event("mois") for _ in range(3)]

    def handle(session: Session, event: JobRequestedEvent) -> None:
        claim_event(session, "c", event)
        add_to_outbox(session, event, "k")

    assert handle_batch(engine, handle, [(record(i, b""), e) for i, e in enumerate(events)]) == []
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert len([s for s in statements if s.startswith("INSERT INTO outbox")]) == 1
    with Session(engine) as session:
        assert len(session.exec(select(ProcessedEvent)).all()) == 3
        assert len(session.exec(select(OutboxMessage)).all()) == 3


def test_objects_each_event_adds_are_written_though_the_next_event_expunges(tmp_path: Path) -> None:
    engine = create_service_engine(f"sqlite:///{tmp_path / 'b.db'}", "b", [table_of(ProcessedEvent)])
    events = [request_event("mois") for _ in range(3)]

    def handle(session: Session, event: JobRequestedEvent) -> None:
        session.add(ProcessedEvent(consumer="c", source=event.source, event_id=str(event.id)))

    assert handle_batch(engine, handle, [(record(i, b""), e) for i, e in enumerate(events)]) == []
    with Session(engine) as session:
        assert {row.event_id for row in session.exec(select(ProcessedEvent))} == {str(e.id) for e in events}


def test_a_dead_letters_reason_is_a_sentence_naming_the_members_not_pydantics_text() -> None:
    document = request_event("mois").model_dump(mode="json")
    document["data"].update(gpu_count="eight-hundred", expected_hours=-1, name="", kind="x", priority="y")
    with pytest.raises(ValidationError) as invalid:
        JobRequestedEvent.model_validate_json(json.dumps(document), strict=True)
    reason = refusal_reason(invalid.value, "jobs.requested")
    assert reason.startswith("the envelope is not a valid jobs.requested event: data.name: ")
    assert "; data.gpu_count: Input should be a valid integer;" in reason
    assert reason.endswith("; and 2 more")
    for raw in ("validation error", "pydantic", "input_value", "eight-hundred", "https://"):
        assert raw not in reason
    assert refusal_reason(PoisonMessage("a report on another site's run"), "jobs.completed") == (
        "a report on another site's run"
    )
