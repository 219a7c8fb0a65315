"""The envelope every event travels in (CloudEvents-like: id, type, source, subject, time, version, data)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DataT = TypeVar("DataT", bound=BaseModel)

# Identifiers for tenants, sites, pools: lower-case slugs, safe in keys, URLs and file names.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Contract(BaseModel):
    """Base for every payload: unknown fields are an error, so a typo never passes silently."""

    # No NaN or infinity: a number that is not finite fails every comparison a rule makes.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EnvelopeSignature(Contract):
    """Ed25519 over the envelope's canonical JSON (every field but this one, keys sorted, no whitespace)."""

    key_id: str = Field(min_length=1, max_length=200, description="The signer's key in the keyring.")
    value: str = Field(min_length=1, max_length=200, description="Base64 of the 64-byte signature.")


class Event(Contract, Generic[DataT]):
    """Envelope. `type` is also the shared Kafka topic (a tenant's own stream carries copies of several
    types); `subject` is the tenant (or site, for capacity events)."""

    # Major.minor of the data contract: a minor bump only adds optional fields.
    SCHEMA_VERSION: ClassVar[str] = "1.1"

    id: uuid.UUID = Field(description="Unique event id; consumers deduplicate on (source, id).")
    type: str = Field(
        description="Event type, equal to the shared topic it is published on; copies of events about a "
        "tenant are also on the tenant's own stream, tenant.<tenant_id>."
    )
    source: str = Field(min_length=1, max_length=200, description="Producer, e.g. 'service/placement'.")
    subject: str = Field(min_length=1, max_length=200, description="Tenant id (site id for capacity).")
    time: AwareDatetime
    schema_version: str = Field(pattern=r"^\d+\.\d+$")
    data: DataT
    signature: EnvelopeSignature | None = Field(
        default=None, description="Who vouches for this envelope; required on tenants' and factories' topics."
    )

    @classmethod
    def create(cls, *, source: str, subject: str, data: DataT, event_id: uuid.UUID | None = None) -> Self:
        return cls(
            id=event_id or uuid.uuid4(),
            type=cls.model_fields["type"].default,
            source=source,
            subject=subject,
            time=datetime.now(UTC),
            schema_version=cls.SCHEMA_VERSION,
            data=data,
        )

    @classmethod
    def major_version(cls) -> int:
        return int(cls.SCHEMA_VERSION.split(".")[0])


# Any event, whatever its payload: what transport code (outbox, inbox, watchers) handles.
AnyEvent = Event[Any]
