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
    JobCancelRequested,
    JobPlacedEvent,
    JobRejected,
    JobRejectedEvent,
    JobRequestedEvent,
    JobStartedEvent,
    job_id_for,
)
from services.placement import handlers as placement
from services.placement.logic import unknown_job_reason
from services.placement.refusals import answer_invalid_envelope
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
        return answer_invalid_envelope(ctx.keyring, session, *refused[0]) if refused else None


def refusals(engine: Engine) -> list[JobRejected]:
    """Every refusal placement wrote, each checked to go to its tenant's stream under its job's record key."""
    rows = outbox(engine, "jobs.rejected")
    answers = [JobRejectedEvent.model_validate_json(row.payload).data for row in rows]
    for row, answer in zip(rows, answers, strict=True):
        assert (row.also_to, row.key) == (tenant_stream(answer.tenant_id), str(answer.job_id))
    return answers


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
    assert rejected.explanation is not None and rejected.explanation.sites  # why, site by site
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


# Every answer to a cancel, in full: what the tenant reads is the contract, not only its code.
def cancelling(tenant: str, job_id: uuid.UUID, reason: str = "budget cut", **envelope: Any) -> JobCancelEvent:
    """A cancel signed by the tenant's key, its envelope changed as given before signing."""
    data = JobCancelRequested(job_id=job_id, tenant_id=tenant, reason=reason)
    event = JobCancelEvent.create(source=f"tenant/{tenant}", subject=tenant, data=data)
    return TEST_KEYS.tenants[tenant].sign(event.model_copy(update=envelope))


def cancel_now(engine: Engine, event: JobCancelEvent) -> None:
    with unit_of_work(engine) as session:
        placement.on_job_cancel(placement_context(), session, event)


def answers_since(engine: Engine, before: int) -> list[tuple[str, Any]]:
    models = {"jobs.rejected": JobRejectedEvent, "jobs.cancelled": JobCancelledEvent}
    return [
        (row.topic, models[row.topic].model_validate_json(row.payload).data)  # type: ignore[attr-defined]
        for row in outbox(engine)[before:]
        if row.topic in models
    ]


def placed_job(engine: Engine, tenant: str = "mois") -> JobRequestedEvent:
    request = request_event(tenant, csap_grade="medium") if tenant == "mois" else request_event(tenant)
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, request)
    return request


def test_a_cancel_whose_subject_is_not_its_tenant_is_refused_saying_so(database_url: tuple[str, str]) -> None:
    engine = placement_engine(database_url)
    request = placed_job(engine)
    before = len(outbox(engine))
    cancel = cancelling("mois", request.data.job_id, subject="hanbit-ai")
    cancel_now(engine, cancel)
    [(topic, refusal)] = answers_since(engine, before)
    assert topic == "jobs.rejected"
    assert refusal == JobRejected(
        job_id=request.data.job_id,
        tenant_id="mois",
        client_request_id="",
        code="invalid_request",
        reason="the envelope's subject 'hanbit-ai' is not the cancel's tenant 'mois'",
        scope="envelope",
        envelope_id=cancel.id,
        envelope_type="jobs.cancel",
    )
    with Session(engine) as session:
        assert session.get(JobRow, str(request.data.job_id)).state == "placed"  # type: ignore[union-attr]


def test_a_cancel_of_another_tenants_job_is_answered_as_for_a_job_nobody_has(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    request = placed_job(engine)
    with Session(engine) as session:
        placed_reason = session.get(JobRow, str(request.data.job_id)).reason  # type: ignore[union-attr]
    before = len(outbox(engine))
    cancel = cancelling("hanbit-ai", request.data.job_id)
    cancel_now(engine, cancel)
    [(_, refusal)] = answers_since(engine, before)
    assert (refusal.tenant_id, refusal.code, refusal.reason, refusal.envelope_type) == (
        "hanbit-ai",
        "unknown_job",
        unknown_job_reason(str(request.data.job_id)),
        "jobs.cancel",
    )
    with Session(engine) as session:
        job = session.get(JobRow, str(request.data.job_id))
        assert job is not None and (job.state, job.reason, job.tenant_id) == ("placed", placed_reason, "mois")


def test_a_cancel_signed_by_another_tenants_key_is_refused_to_the_signer(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    request = placed_job(engine)
    before = len(outbox(engine))
    data = JobCancelRequested(job_id=request.data.job_id, tenant_id="mois", reason="r")
    forged = TEST_KEYS.tenants["hanbit-ai"].sign(
        JobCancelEvent.create(source="tenant/mois", subject="mois", data=data)
    )
    cancel_now(engine, forged)
    cancel_now(engine, forged)  # a redelivery is not answered twice
    [(_, refusal)] = answers_since(engine, before)
    assert (refusal.tenant_id, refusal.code, refusal.envelope_id) == (
        "hanbit-ai",
        "invalid_request",
        forged.id,
    )
    assert "a tenant's key signs only for its own tenant, 'hanbit-ai'" in refusal.reason
    with Session(engine) as session:
        assert session.get(JobRow, str(request.data.job_id)).state == "placed"  # type: ignore[union-attr]


def test_a_cancel_of_a_placed_job_names_its_site_and_reason_and_waits_for_the_factory(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    request = placed_job(engine)
    [placed_row] = outbox(engine, "jobs.placed")
    site = JobPlacedEvent.model_validate_json(placed_row.payload).data.site_id
    before = len(outbox(engine))
    cancel = cancelling("mois", request.data.job_id, reason="the minister changed her mind")
    cancel_now(engine, cancel)
    cancel_now(engine, cancel)  # the same envelope again changes nothing
    [(topic, cancelled)] = answers_since(engine, before)
    assert topic == "jobs.cancelled"
    assert (cancelled.stage, cancelled.site_id, cancelled.reason, cancelled.tenant_id) == (
        "placed",
        site,
        "the minister changed her mind",
        "mois",
    )
    with Session(engine) as session:
        job = session.get(JobRow, str(request.data.job_id))
        assert job is not None and (job.state, job.reason) == ("cancelling", "the minister changed her mind")
    second = len(outbox(engine))
    cancel_now(engine, cancelling("mois", request.data.job_id))  # another cancel while it stops
    [(_, refusal)] = answers_since(engine, second)
    assert (refusal.code, refusal.reason) == ("not_cancellable", "the job is already being cancelled")


def test_a_cancel_of_a_queued_job_cancels_it_at_once_and_a_repeat_of_its_request_changes_nothing(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    big = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=600)
    waiting = request_event("mois", csap_grade="high", accelerator_model="A100", gpu_count=100)
    with unit_of_work(engine) as session:
        for event in (big, waiting):
            placement.on_job_requested(placement_context(), session, event)
    before = len(outbox(engine))
    cancel_now(engine, cancelling("mois", waiting.data.job_id, reason="not needed"))
    [(_, cancelled)] = answers_since(engine, before)
    assert (cancelled.stage, cancelled.site_id, cancelled.reason) == ("queued", None, "not needed")
    with Session(engine) as session:
        job = session.get(JobRow, str(waiting.data.job_id))
        assert job is not None and (job.state, job.reason) == ("cancelled", "not needed")
    after = len(outbox(engine))
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, waiting)  # redelivered
        placement.on_job_requested(
            placement_context(),
            session,
            request_event(
                "mois",
                client_id=waiting.data.client_request_id,
                **waiting.data.model_dump(
                    include={"csap_grade", "accelerator_model", "gpu_count", "deadline", "kind", "name"}
                ),
            ),
        )
    assert answers_since(engine, after) == []  # the same request again: nothing to answer, nothing cancelled


def test_a_request_its_cancel_overtook_is_cancelled_on_arrival_with_the_cancels_reason(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    early = request_event("mois", csap_grade="medium")
    cancel_now(engine, cancelling("mois", early.data.job_id, reason="sent too soon"))
    before = len(outbox(engine))
    with unit_of_work(engine) as session:
        placement.on_job_requested(placement_context(), session, early)
    [(topic, cancelled)] = answers_since(engine, before)
    assert topic == "jobs.cancelled"
    assert (cancelled.stage, cancelled.reason, cancelled.job_id, cancelled.site_id) == (
        "before_request",
        "sent too soon",
        early.data.job_id,
        None,
    )
    with Session(engine) as session:
        job = session.get(JobRow, str(early.data.job_id))
        assert job is not None and job.request == early.data.model_dump(mode="json")
        assert job.client_request_id == early.data.client_request_id


def test_an_invalid_envelope_is_answered_once_under_the_job_it_names_with_its_first_errors(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    document = request_document(gpu_count=0, expected_hours=0, name="", kind="dreaming", csap_grade="top")
    sent = signed_as_sent(document)
    assert consume(engine, "jobs.requested", sent) is True
    assert consume(engine, "jobs.requested", sent) is True  # a redelivery: answered already, not again
    [refusal] = refusals(engine)
    client_id = document["data"]["client_request_id"]
    assert (refusal.job_id, refusal.client_request_id) == (job_id_for("mois", client_id), client_id)
    assert len(refusal.field_errors) == 5
    shown = "; ".join(f"{e.location}: {e.message}" for e in refusal.field_errors[:3])
    assert refusal.reason == f"the envelope is not a valid jobs.requested event: {shown}; and 2 more"


def test_an_invalid_cancel_is_answered_under_its_job_id_and_data_that_is_not_an_object_too(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    job_id = uuid.uuid4()
    cancel = {
        "id": str(uuid.uuid4()),
        "type": "jobs.cancel",
        "source": "tenant/mois",
        "subject": "mois",
        "time": datetime.now(UTC).isoformat(),
        "schema_version": "1.0",
        "data": {"job_id": str(job_id), "tenant_id": "mois", "reason": 7},
    }
    assert consume(engine, "jobs.cancel", signed_as_sent(cancel)) is True
    not_an_object = request_document() | {"data": 5}
    assert consume(engine, "jobs.requested", signed_as_sent(not_an_object)) is True
    first, second = refusals(engine)
    assert (first.job_id, first.envelope_type, first.reason.count(";")) == (job_id, "jobs.cancel", 0)
    assert first.reason.startswith("the envelope is not a valid jobs.cancel event: data.reason: ")
    assert (second.client_request_id, second.envelope_type) == ("", "jobs.requested")
    assert second.reason.startswith("the envelope is not a valid jobs.requested event: data: ")


def test_a_reused_envelope_id_with_other_content_is_refused_and_a_redelivery_is_not(
    database_url: tuple[str, str],
) -> None:
    engine = placement_engine(database_url)
    first = request_document()
    reused = request_document()
    reused["id"] = first["id"]
    # The first as sent, the same envelope written again otherwise (a redelivery), then other content
    # under its id, twice.
    rewritten = json.dumps(first, indent=2)
    for sent in (signed_as_sent(first), signed_as_sent(first, rewritten), *[signed_as_sent(reused)] * 2):
        assert consume(engine, "jobs.requested", sent) is None
    [refusal] = refusals(engine)
    assert (refusal.code, refusal.scope, refusal.envelope_id) == (
        "reused_envelope_id",
        "envelope",
        uuid.UUID(first["id"]),
    )
    assert refusal.client_request_id == reused["data"]["client_request_id"]
    assert "an id of its own" in refusal.reason
    assert len(outbox(engine, "jobs.placed")) == 1
    with Session(engine) as session:
        assert session.get(JobRow, str(refusal.job_id)) is None


def test_a_source_that_is_not_the_signer_is_refused_with_its_code(database_url: tuple[str, str]) -> None:
    engine = placement_engine(database_url)
    document = request_document()
    document["source"] = "tenant/hanbit-ai"
    for _ in range(2):  # answered once
        assert consume(engine, "jobs.requested", signed_as_sent(document)) is None
    [refusal] = refusals(engine)
    assert (refusal.code, refusal.tenant_id) == ("source_not_signer", "mois")
    assert "'tenant/mois'" in refusal.reason
    assert not outbox(engine, "jobs.placed")


def test_a_schema_major_version_not_read_is_refused_with_its_code(database_url: tuple[str, str]) -> None:
    engine = placement_engine(database_url)
    readable = request_document()
    readable["schema_version"] = "2.0"
    unreadable = request_document(gpu_count="many")
    unreadable["schema_version"] = "2.1"
    assert consume(engine, "jobs.requested", signed_as_sent(readable)) is None
    assert consume(engine, "jobs.requested", signed_as_sent(unreadable)) is True
    answers = refusals(engine)
    assert [(a.code, a.envelope_id) for a in answers] == [
        ("unsupported_schema_version", uuid.UUID(readable["id"])),
        ("unsupported_schema_version", uuid.UUID(unreadable["id"])),
    ]
    assert all("major version 1" in answer.reason for answer in answers)
    assert not outbox(engine, "jobs.placed")
