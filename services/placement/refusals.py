"""How placement refuses a tenant's envelope before its job is touched, and tells the tenant: a signature of
another tenant's key, a source that is not the signer, a schema major version it does not read, an id
already taken by other content, and an envelope that is not a valid event. Each refusal is answered once
on the tenant's stream (scope envelope), with its code; what nobody can be proved to have sent is
dead-lettered instead."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlmodel import Session

from contracts.events import (
    EVENT_MODELS,
    FieldError,
    JobCancelEvent,
    JobRejected,
    JobRejectedEvent,
    JobRequestedEvent,
    RejectionCode,
    tenant_source,
)
from services.placement.logic import answered_job, as_uuid, field_errors
from services.placement.storage import TenantEnvelopeRow
from services.shared.batch import Record, refusal_reason
from services.shared.domain.signing import Keyring, KeyRole, SignatureRefused, received_content, signed_form
from services.shared.inbox import claim, claim_event
from services.shared.logging import get_logger
from services.shared.outbox import add_to_outbox

CONSUMER = "placement"
SOURCE = "service/placement"
# Kafka redelivers, and an attacker can copy an envelope: either way its id was seen, and nothing happens.
SEEN_BEFORE = "an envelope with this id from this source was handled already: a redelivery or a replay"

TenantEnvelope = JobRequestedEvent | JobCancelEvent


@dataclass(frozen=True)
class EnvelopeRefusal:
    """Whom to tell that an envelope was refused, and which envelope it was."""

    tenant_id: str
    job_id: uuid.UUID
    client_request_id: str
    envelope_id: uuid.UUID | None
    envelope_type: str


def refuse_envelope(
    session: Session,
    refusal: EnvelopeRefusal,
    code: RejectionCode,
    reason: str,
    errors: Sequence[FieldError] = (),
) -> None:
    """Tell a tenant on its stream that one of its envelopes was refused; its job, if any, is unchanged."""
    get_logger(job_id=str(refusal.job_id), tenant_id=refusal.tenant_id).info(
        "envelope_refused", code=code.value, reason=reason[:300], envelope_type=refusal.envelope_type
    )
    rejected = JobRejected(
        job_id=refusal.job_id,
        tenant_id=refusal.tenant_id,
        client_request_id=refusal.client_request_id,
        code=code,
        reason=reason,
        scope="envelope",
        envelope_id=refusal.envelope_id,
        envelope_type=refusal.envelope_type,
        field_errors=list(errors),
    )
    add_to_outbox(
        session,
        JobRejectedEvent.create(source=SOURCE, subject=refusal.tenant_id, data=rejected),
        str(refusal.job_id),
    )


def refused_before_reading(keyring: Keyring, session: Session, event: TenantEnvelope, tenant_id: str) -> bool:
    """Check a tenant's envelope is signed by a key that speaks for the tenant it names, comes from that
    tenant's source and is of a major version this service reads. A signature that does not verify is
    refused unread (dead-lettered: nobody proved who sent it). Anything else is the signer's mistake: it is
    told, once, and nothing else happens. True if refused."""
    refusal = keyring.refusal(event, KeyRole.TENANT, tenant_id)
    if refusal is not None:
        author = keyring.author(event.sent_content(), KeyRole.TENANT)
        if author is None:
            raise SignatureRefused(refusal)
        code = RejectionCode.INVALID_REQUEST
        reason = f"{refusal}: a tenant's key signs only for its own tenant, {author.principal!r}"
        signer = author.principal
    elif event.source != tenant_source(tenant_id):
        code, signer = RejectionCode.SOURCE_NOT_SIGNER, tenant_id
        reason = (
            f"the envelope's source is {event.source!r}, but its signer is tenant {tenant_id!r}: a tenant's "
            f"envelopes come from {tenant_source(tenant_id)!r}"
        )
    elif (problem := unread_version(event.schema_version, type(event).major_version())) is not None:
        code, reason, signer = RejectionCode.UNSUPPORTED_SCHEMA_VERSION, problem, tenant_id
    else:
        return False
    if claim_event(session, CONSUMER, event):
        job_id, client_request_id = answered_job(signer, event.type, event.sent_content()["data"])
        envelope = EnvelopeRefusal(signer, job_id, client_request_id, event.id, event.type)
        refuse_envelope(session, envelope, code, reason)
    return True


def unread_version(schema_version: object, major: int) -> str | None:
    """Why an envelope of this schema_version is not read by a service reading `major`, or None."""
    if isinstance(schema_version, str) and schema_version.split(".")[0] == str(major):
        return None
    return (
        f"schema_version {schema_version!r} is not read here: this marketplace reads major version {major} "
        f"(send {major}.x, with the fields of the published contract)"
    )


def taken_first_time(session: Session, event: TenantEnvelope, refusal: EnvelopeRefusal) -> bool:
    """Claim a tenant's envelope by its (source, id). False when that id was handled before: the same
    content again is a redelivery and changes nothing; other content under it is refused, once, as
    reused_envelope_id (de-duplication would otherwise drop it without a word)."""
    digest = hashlib.sha256(signed_form(event)).hexdigest()
    if claim_event(session, CONSUMER, event):
        session.add(TenantEnvelopeRow(source=event.source, event_id=str(event.id), content_sha256=digest))
        return True
    taken = session.get(TenantEnvelopeRow, (event.source, str(event.id)))
    if taken is None or taken.content_sha256 == digest:
        get_logger(event_id=str(event.id)).info("envelope_seen_before_ignored", reason=SEEN_BEFORE)
        return False
    if claim(session, CONSUMER, f"reused/{event.source}/{event.id}", digest):
        reason = (
            f"envelope id {event.id} from {event.source} was taken already by an envelope with other "
            "content: nothing of this one was done; send it with an id of its own"
        )
        refuse_envelope(session, refusal, RejectionCode.REUSED_ENVELOPE_ID, reason)
    return False


def answer_invalid_envelope(keyring: Keyring, session: Session, record: Record, error: BaseException) -> bool:
    """A record on a tenant's topic that is not a valid event: if a tenant's key signed it, the tenant is
    told why on its stream (invalid_request, with each field's error, or unsupported_schema_version) and
    True, the record is done with; if nobody can be proved to have sent it, False: it goes to the
    dead-letter topic. Its job id is not reserved, so a corrected request may use the same
    client_request_id."""
    if not isinstance(error, ValidationError):
        return False
    try:
        content = received_content(record.value or b"")
    except SignatureRefused:
        return False
    author = keyring.author(content, KeyRole.TENANT)
    if author is None:
        return False
    digest = hashlib.sha256(record.value or b"").hexdigest()
    if not claim(session, CONSUMER, f"tenant/{author.principal}", digest):
        return True  # a redelivery, answered already
    tenant, data = author.principal, content.get("data")
    job_id, client_request_id = answered_job(tenant, record.topic, data if isinstance(data, dict) else {})
    refusal = EnvelopeRefusal(tenant, job_id, client_request_id, as_uuid(content.get("id")), record.topic)
    major = EVENT_MODELS[record.topic].major_version()
    if (problem := unread_version(content.get("schema_version"), major)) is not None:
        refuse_envelope(session, refusal, RejectionCode.UNSUPPORTED_SCHEMA_VERSION, problem)
        return True
    reason = refusal_reason(error, record.topic)
    refuse_envelope(session, refusal, RejectionCode.INVALID_REQUEST, reason, field_errors(error))
    return True
