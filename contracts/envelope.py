"""The envelope every event travels in (CloudEvents-like: id, type, source, subject, time, version, data)."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
)

from contracts.limits import MAX_JSON_DEPTH

DataT = TypeVar("DataT", bound=BaseModel)

# Identifiers for tenants, sites, pools: lower-case slugs, safe in keys, URLs and file names.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


# The integers every JSON reader keeps exactly (JavaScript's safe integers): a bigger one would be read
# differently by different clients, and has no RFC 8785 form to sign.
MAX_PORTABLE_INTEGER = 2**53 - 1
# C0 and C1 control characters but tab, line feed and carriage return: never meaningful in this
# marketplace's text, a NUL is refused by PostgreSQL, and the rest can forge lines in what people read.
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def portability_problem(value: object) -> str | None:
    """Why a value (a field's, or inside its lists and mappings; nested contracts check themselves) cannot
    travel as every client would read it, or None."""
    if isinstance(value, str):
        found = CONTROL_CHARACTER.search(value)
        if found is None:
            return None
        return (
            f"contains the control character U+{ord(found.group()):04X} at position {found.start()}: "
            "only tab, line feed and carriage return are allowed in text"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) <= MAX_PORTABLE_INTEGER:
            return None
        return f"{value} is beyond +-(2**53 - 1), the integers every JSON reader keeps exactly"
    if isinstance(value, list | tuple):
        return next(filter(None, map(portability_problem, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(portability_problem, [*value, *value.values()])), None)
    return None


class UnreadableJson(ValueError):
    """Bytes that are not one plain reading of a JSON object: refused before any model or signature."""


UTF8_BOM = b"\xef\xbb\xbf"


def read_json(value: bytes) -> dict[str, Any]:
    """The one reading of an envelope's bytes, which its signature check and its model both take: UTF-8
    without a byte-order mark, each member once, nested at most MAX_JSON_DEPTH deep, every number finite
    and, as JavaScript and RFC 8785 read numbers, an integer beyond +-(2**53 - 1) read as the nearest IEEE
    double (5000000000000000000 is 5e18, as JSON.stringify writes it)."""
    if value.startswith(UTF8_BOM):
        raise UnreadableJson("the envelope starts with a byte-order mark: send UTF-8 JSON without one")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableJson(f"the envelope is not UTF-8: {error.reason} at byte {error.start}") from None
    try:
        content = json.loads(
            text,
            object_pairs_hook=_members_once,
            parse_int=_integer,
            parse_float=_finite,
            parse_constant=_finite,
        )
    except RecursionError:
        raise UnreadableJson(f"the envelope is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnreadableJson:
        raise
    except ValueError as error:
        raise UnreadableJson(f"the envelope is not JSON: {error}") from None
    if not isinstance(content, dict):
        raise UnreadableJson("an envelope is a JSON object")
    if _deeper_than(content, MAX_JSON_DEPTH):
        raise UnreadableJson(f"the envelope is nested deeper than {MAX_JSON_DEPTH} levels")
    return content


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise UnreadableJson(f"the member {repeated[0]!r} appears twice in one object: send it once")
    return dict(pairs)


def _integer(literal: str) -> int | float:
    # Python reads any integer exactly (and refuses one of over 4,300 digits); JavaScript reads a double.
    if len(literal) <= 15:  # below 2**53 whatever its digits
        return int(literal)
    if len(literal) <= 4000 and abs(number := int(literal)) <= MAX_PORTABLE_INTEGER:
        return number
    return _finite(literal)


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise UnreadableJson(f"{literal[:40]} is not a finite number: every number must be finite")
    return number


def _deeper_than(content: Any, limit: int) -> bool:
    level = [content]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _canonical_uuid_text(value: object) -> object:
    if isinstance(value, str) and not UUID_TEXT.fullmatch(value):
        raise ValueError(
            "a UUID is written as 8-4-4-4-12 hexadecimal digits, e.g. 6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11"
        )
    return value


UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A UUID in its one text form: no braces, no urn: prefix, no missing hyphens.
UuidText = Annotated[uuid.UUID, BeforeValidator(_canonical_uuid_text)]


# Values that are portable whatever they hold (floats are finite by the config below).
ALWAYS_PORTABLE: frozenset[type] = frozenset({bool, float, type(None), uuid.UUID, datetime, date})


class Contract(BaseModel):
    """Base for every payload: unknown fields are an error, so a typo never passes silently."""

    # No NaN or infinity: a number that is not finite fails every comparison a rule makes.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Inbound(Contract):
    """A payload written outside the marketplace's services, by a tenant, a factory or an officer: each
    field's text and integers must travel as every client reads them (what the services write from it is
    then portable too)."""

    @field_validator("*", mode="after")
    @classmethod
    def _portable(cls, value: Any) -> Any:
        if value.__class__ not in ALWAYS_PORTABLE and (problem := portability_problem(value)):
            raise ValueError(problem)
        return value


class EnvelopeSignature(Inbound):
    """Ed25519 over the RFC 8785 (JCS) form of the envelope as sent, with this member left out."""

    key_id: str = Field(min_length=1, max_length=200, description="The signer's key in the keyring.")
    value: str = Field(min_length=1, max_length=200, description="Base64 of the 64-byte signature.")


class Received:
    """The bytes an envelope arrived as, their one reading (`read_json`) and, once it is asked for, the
    canonical form its signature covers (computed once: RFC 8785 costs 1.5 ms for the largest request). Two
    events with equal fields are equal however each was written."""

    __slots__ = ("content", "signed_form", "value")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: bytes, content: dict[str, Any]):
        self.value = value
        self.content = content
        self.signed_form: bytes | None = None

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, Received)


class Event(Contract, Generic[DataT]):
    """Envelope. `type` is also the shared Kafka topic (a tenant's own stream carries copies of several
    types); `subject` is the tenant (or site, for capacity events)."""

    # Major.minor of the data contract: a minor bump only adds optional fields.
    SCHEMA_VERSION: ClassVar[str] = "1.1"
    # On a signed topic, the version whose signatures cover the envelope's RFC 8785 form as sent. The form
    # before it (the service's own dump of the parsed event) is still accepted while the topic is at this
    # version, and refused from its next one.
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = None

    id: UuidText = Field(description="Unique event id; consumers deduplicate on (source, id).")
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
    # The JSON the envelope arrived as, when it was parsed from a record: a signature covers what was sent,
    # not how this service would write it again.
    _received: Received | None = PrivateAttr(default=None)

    @classmethod
    def from_received(cls, value: bytes) -> Self:
        """The event its bytes are, read once (`read_json`) and then strictly: a boolean, a string or a
        number is only ever itself (no `true` for 1, no "8" for 8); any number where a float is taken."""
        content = read_json(value)
        event = cls.model_validate_json(json.dumps(content, ensure_ascii=False), strict=True)
        event._received = Received(value, content)
        return event

    @property
    def received(self) -> bytes | None:
        return self._received.value if self._received is not None else None

    @property
    def reading(self) -> Received | None:
        """What the event was received as (None for an event this service made)."""
        return self._received

    def sent_content(self) -> dict[str, Any]:
        """The envelope's members as its sender wrote them: as read when it was received (not read again),
        else as this service writes it. A new top-level dict each call, for the caller to change."""
        if self._received is not None:
            return dict(self._received.content)
        return self.model_dump(mode="json")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        if update:  # a changed copy is not what was received
            copy._received = None
        return copy

    @classmethod
    def accepts_pre_jcs_signatures(cls) -> bool:
        return cls.SCHEMA_VERSION == cls.JCS_SIGNATURES_SINCE

    @field_validator("source", "subject", mode="after")
    @classmethod
    def _portable_text(cls, value: str) -> str:
        if (problem := portability_problem(value)) is not None:
            raise ValueError(problem)
        return value

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
