"""What a tenant is told about the envelopes it sends: refusals on its own stream, never silence, never a
database's error text; and what stays in the dead-letter topic because nobody proved who sent it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from contracts import tenant_stream
from contracts.events import (
    JobCancelEvent,
    JobCancelledEvent,
    JobPlacedEvent,
    JobRejected,
    JobRejectedEvent,
    JobRequestedEvent,
    JobStartedEvent,
)
from services.placement import handlers as placement
from services.placement.storage import TABLES as PLACEMENT_TABLES
from services.placement.storage import JobRow
from services.shared.batch import parse_records
from services.shared.db import unit_of_work
from services.shared.domain.signing import KeyRole, jcs
from tests.conftest import KEYRING, TEST_KEYS, request_event, signed_as_sent
from tests.storage_support import cancel_event, make_engine, offer_all, outbox, placement_context


def request_document(**data: Any) -> dict[str, Any]:
    """A request as a client writes it, before signing: defaults left out."""
    return {
        "id": str(uuid.uuid4()),
        "type": "jobs.requested",
        "source": "tenant/mois",
        "subject": "mois",
        "time": datetime.now(UTC).isoformat(),
        "schema_version": "1.5",
        "data": {
            "tenant_id": "mois",
            "client_request_id": uuid.uuid4().hex,
            "name": "summariser",
            "kind": "fine_tuning",
            "gpu_count": 8,
            "expected_hours": 2,
            "deadline": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
            "csap_grade": "medium",
        }
        | data,
    }


def consume(engine: Engine, topic: str, value: bytes) -> bool | None:
    """One record through placement as the runtime takes it: parsed, then handled, or answered if it is
    not a valid event. Returns whether an invalid record was answered (None: it was a valid event)."""
    ctx = placement_context()
    record = SimpleNamespace(topic=topic, partition=0, offset=0, key=b"k", value=value, headers=[])
    model = JobRequestedEvent if topic == "jobs.requested" else JobCancelEvent
    events, refused = parse_records(model, [record])
    with unit_of_work(engine) as session:
        for _, event in events:
            handler = placement.on_job_requested if topic == "jobs.requested" else placement.on_job_cancel
            handler(ctx, session, event)  # type: ignore[arg-type]
        return placement.answer_invalid_envelope(ctx, session, *refused[0]) if refused else None


def refusals(engine: Engine) -> list[JobRejected]:
    rows = outbox(engine, "jobs.rejected")
    assert all(
        row.also_to == tenant_stream(JobRejectedEvent.model_validate_json(row.payload).data.tenant_id)
        for row in rows
    )
    return [JobRejectedEvent.model_validate_json(row.payload).data for row in rows]


def placement_engine(database_url: tuple[str, str]) -> Engine:
    engine = make_engine(database_url, "placement", PLACEMENT_TABLES)
    offer_all(engine, placement_context())
    return engine


def test_an_invalid_request_its_tenant_signed_is_answered_with_each_fields_error(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    document = request_document(gpu_count=0, expected_hours=9000)
    assert consume(engine, "jobs.requested", signed_as_sent(document)) is True
    [refusal] = refusals(engine)
    assert (refusal.code, refusal.scope, refusal.envelope_type) == (
        "invalid_request",
        "envelope",
        "jobs.requested",
    )
    assert refusal.envelope_id == uuid.UUID(document["id"])
    assert refusal.client_request_id == document["data"]["client_request_id"]
    errors = {error.location: error.message for error in refusal.field_errors}
    assert set(errors) == {"data.gpu_count", "data.expected_hours"}
    assert (
        "greater than or equal to 1" in errors["data.gpu_count"] and "8760" in errors["data.expected_hours"]
    )
    # The job id was not taken: the corrected request, under the same client_request_id, is placed.
    with Session(engine) as session:
        assert session.get(JobRow, str(refusal.job_id)) is None
    corrected = request_document(client_request_id=document["data"]["client_request_id"])
    assert consume(engine, "jobs.requested", signed_as_sent(corrected)) is None
    assert len(outbox(engine, "jobs.placed")) == 1


def test_a_data_category_no_rule_knows_is_answered_naming_the_known_ones(
    database_url: tuple[str, str],
) -> None:
    """A category the policies do not know could be one a rule should have stopped (medical records sent
    as "medical_records" would otherwise run abroad): the tenant is told, and nothing is placed."""
    engine = placement_engine(database_url)
    datasets = [{"name": "charts", "categories": ["EMR", "medical_records"], "personal_info": True}]
    document = request_document(datasets=datasets)
    assert consume(engine, "jobs.requested", signed_as_sent(document)) is True
    [refusal] = refusals(engine)
    assert refusal.code == "invalid_request"
    [error] = refusal.field_errors
    assert error.location == "data.datasets.0.categories.1"
    assert "'medical_records' is not a data category" in error.message and "emr" in error.message
    assert not outbox(engine, "jobs.placed")


def test_bytes_nobody_proved_they_sent_are_left_for_the_dead_letter_topic(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    document = request_document(gpu_count=0)
    unsigned = json.dumps(document).encode()
    forged = signed_as_sent(document).replace(b'"gpu_count": 0', b'"gpu_count": -1')
    not_json = b'{"id": "x", "signature": {"key_id": "mois-demo", "value": "AAAA"}'
    for value in (unsigned, forged, not_json):
        assert consume(engine, "jobs.requested", value) is False
    assert not outbox(engine)


def test_a_non_finite_number_cannot_be_signed_so_it_is_dead_lettered_saying_why(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        sent = signed_as_sent(request_document()).replace(
            b'"expected_hours": 2', b'"expected_hours": ' + literal
        )
        record = SimpleNamespace(
            topic="jobs.requested", partition=0, offset=0, key=b"k", value=sent, headers=[]
        )
        events, [(_, error)] = parse_records(JobRequestedEvent, [record])
        assert not events and "finite number" in str(error) and "8760" not in str(error)
        assert consume(engine, "jobs.requested", sent) is False
    assert not outbox(engine)


def test_a_nul_or_other_control_character_is_refused_with_a_reason_never_a_database_error(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    for text in ("nul\u0000here", "bell\u0007", "esc\u001b[31m", "c1\u0085"):
        assert (
            consume(engine, "jobs.requested", signed_as_sent(request_document(client_request_id=text)))
            is True
        )
    answers = refusals(engine)
    assert len(answers) == 4 and all(answer.client_request_id == "" for answer in answers)
    for answer in answers:
        [error] = answer.field_errors
        assert error.location == "data.client_request_id" and "control character U+" in error.message
        assert "psycopg" not in answer.reason and "INSERT" not in answer.reason


@settings(max_examples=40, deadline=None)
@given(
    field=st.sampled_from(["name", "client_request_id", "accelerator_model"]),
    character=st.characters(codec="utf-8", categories=["Cc"]).filter(lambda c: c not in "\t\n\r"),
)
def test_every_control_character_in_a_tenants_text_is_refused_at_the_contract(
    field: str, character: str
) -> None:
    document = request_document(**{field: f"a{character}b"})
    try:
        JobRequestedEvent.model_validate_json(json.dumps(document))
    except ValidationError as error:
        [detail] = error.errors()
        assert detail["loc"] == ("data", field) and f"U+{ord(character):04X}" in detail["msg"]
    else:
        raise AssertionError(f"{character!r} in {field} was accepted")


def test_a_different_resubmission_is_refused_and_the_job_keeps_its_first_request(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    same = {"client_id": "same-id", "csap_grade": "medium", "deadline": "2027-06-01T00:00:00+09:00"}
    first, again = request_event("mois", **same), request_event("mois", **same)
    different = request_event("mois", **same, gpu_count=16)
    with unit_of_work(engine) as session:
        for event in (first, again, different):
            placement.on_job_requested(placement_context(), session, event)
    [refusal] = refusals(engine)
    assert (refusal.code, refusal.scope, refusal.envelope_id) == (
        "conflicting_resubmission",
        "envelope",
        different.id,
    )
    assert "gpu_count" in refusal.reason and "placed" in refusal.reason
    with Session(engine) as session:
        job = session.get(JobRow, str(first.data.job_id))
        assert job is not None and job.state == "placed" and job.gpu_count == 8


def test_a_cancel_of_an_unknown_job_is_answered_and_a_request_it_overtook_is_cancelled_on_arrival(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    early = request_event("mois", csap_grade="medium")
    with unit_of_work(engine) as session:
        placement.on_job_cancel(placement_context(), session, cancel_event(early.data.job_id))
        placement.on_job_cancel(placement_context(), session, cancel_event(early.data.job_id))
    refusal, again = refusals(engine)
    assert again.code == refusal.code and again.envelope_id != refusal.envelope_id
    assert (
        refusal.code == "unknown_job"
        and refusal.scope == "envelope"
        and "cancelled on arrival" in refusal.reason
    )
    assert not outbox(engine, "jobs.cancelled")
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, early)
    [cancelled] = (
        JobCancelledEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.cancelled")
    )
    assert cancelled.stage == "before_request" and not outbox(engine, "jobs.placed")


def test_a_cancel_of_a_finished_job_says_so(database_url: tuple[str, str]) -> None:
    engine = placement_engine(database_url)
    job = request_event("mois", csap_grade="medium", gpu_count=10**6)  # fits nowhere: rejected
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, job)
        placement.on_job_cancel(placement_context(), session, cancel_event(job.data.job_id))
    rejected, refused = refusals(engine)
    assert rejected.scope == "job" and rejected.code == "never_fits"
    assert refused.scope == "envelope" and refused.code == "not_cancellable" and "rejected" in refused.reason


def test_a_request_signed_by_another_tenants_key_is_refused_to_the_signer(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    document = request_document()
    assert consume(engine, "jobs.requested", signed_as_sent(document, tenant="hanbit-ai")) is None
    [refusal] = refusals(engine)
    assert (
        refusal.tenant_id == "hanbit-ai" and refusal.code == "invalid_request" and "'mois'" in refusal.reason
    )
    with Session(engine) as session:
        assert session.get(JobRow, str(refusal.job_id)) is None
        assert session.get(JobRow, str(JobRequestedEvent.model_validate(document).data.job_id)) is None


def test_a_run_that_cannot_end_by_its_deadline_is_rejected_with_its_own_reason(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    with unit_of_work(engine) as session:
        placement.on_job_requested(
            placement_context(), session, request_event("mois", expected_hours=3, deadline=soon)
        )
    [rejected] = refusals(engine)
    assert rejected.code == "deadline_unreachable" and rejected.scope == "job"
    assert "needs 3 h" in rejected.reason and not outbox(engine, "jobs.placed")


def test_a_request_whose_subject_is_not_its_tenant_is_rejected(database_url: tuple[str, str]) -> None:
    engine = placement_engine(database_url)
    document = request_document() | {"subject": "hanbit-ai"}
    assert consume(engine, "jobs.requested", signed_as_sent(document)) is None
    [rejected] = refusals(engine)
    assert (rejected.tenant_id, rejected.code, rejected.scope) == ("mois", "invalid_request", "job")
    assert "subject 'hanbit-ai' is not the job's tenant 'mois'" in rejected.reason
    assert not outbox(engine, "jobs.placed")


def test_a_factorys_report_reaches_the_tenants_stream_as_the_factory_wrote_it(
    database_url: tuple[str, str],
) -> None:
    """So the tenant can check the factory's signature over its own bytes, whatever JSON the factory's
    language writes (here an upper-case id and `+00:00`)."""
    engine = placement_engine(database_url)
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, request_event("mois", csap_grade="medium"))
    [row] = outbox(engine, "jobs.placed")
    placed = JobPlacedEvent.model_validate_json(row.payload).data
    document = {
        "id": str(uuid.uuid4()).upper(),
        "type": "jobs.started",
        "source": f"factory/{placed.site_id}",
        "subject": "mois",
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "schema_version": "1.3",
        "data": placed.model_dump(
            mode="json", include={"job_id", "tenant_id", "site_id", "pool_id", "gpu_count"}
        ),
    }
    signer = TEST_KEYS.factory
    value = signer.signature_over(jcs(document))
    sent = json.dumps(document | {"signature": {"key_id": signer.key_id, "value": value}}).encode()
    with unit_of_work(engine) as session:
        placement.on_job_started(placement_context(), session, JobStartedEvent.from_received(sent))
    [copy] = outbox(engine, tenant_stream("mois"))
    assert copy.payload == sent
    assert (
        KEYRING.refusal(JobStartedEvent.from_received(copy.payload), KeyRole.FACTORY, placed.site_id) is None
    )
