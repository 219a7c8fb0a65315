"""Kafka wiring shared by every service: broker factory, dead-lettering, topic creation, outbox publishing.

Offsets are committed only after a handler returns (AckPolicy.NACK_ON_ERROR): a handler commits its effect,
its outbox rows and its inbox row in one transaction first, so a crash before the offset commit only causes
a redelivery, which the inbox turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.message import StreamMessage
from faststream.security import BaseSecurity, SASLScram256, SASLScram512
from sqlalchemy.exc import IntegrityError

from contracts import TOPICS, dead_letter_topic, stream_tenant, tenant_stream
from contracts.limits import BROKER_MESSAGE_MAX_BYTES
from services.shared.batch import MAX_INTEGRITY_ATTEMPTS, Record, oversized, refusal_reason
from services.shared.db import is_transient_database_error
from services.shared.logging import get_logger
from services.shared.outbox import OutboxMessage
from services.shared.settings import Settings

# A database that is down or refusing connections is waited for, never a reason to dead-letter good
# messages: the same message is retried with this longest pause until the database is back.
MAX_RETRY_PAUSE_SECONDS = 5.0
ERROR_HEADER_LIMIT = 2000

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")
SCRAM_MECHANISMS = {"SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def retry_pause(error: BaseException, attempt: int, batch: bool = False) -> float | None:
    """Seconds to wait before retrying a failed message or batch, or None to dead-letter it. A batch
    handler refuses its bad events itself, so what escapes it (a dead letter that could not be sent, say)
    is retried a few times before its events, most of them already applied, are dead-lettered."""
    pause = min(MAX_RETRY_PAUSE_SECONDS, 0.2 * 2.0**attempt)
    if is_transient_database_error(error):
        return pause
    # An IntegrityError here is a concurrent duplicate losing the race; the retry sees the winner's row.
    if (batch or isinstance(error, IntegrityError)) and attempt < MAX_INTEGRITY_ATTEMPTS:
        return pause
    return None


def dead_letter_middleware(consumer: str) -> type[BaseMiddleware]:
    """Middleware around every handler, for one message or a batch: a database outage is waited out (the
    message or batch is redelivered after a pause); a single message the handler cannot process goes to
    `<topic>.dlq`, so the partition goes on. Batch handlers dead-letter their own bad events; a batch that
    still fails after the retries has each of its messages dead-lettered rather than blocking the topic."""
    attempts: dict[tuple[str, int, int], int] = {}

    class DeadLetter(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            # A batch is a tuple of records (a list under FastStream's test broker).
            raw = msg.raw_message
            batch = isinstance(raw, tuple | list)
            records: Sequence[Record] = raw if batch else (raw,)
            if not records:
                return await call_next(msg)
            first = records[0]
            position = (first.topic, first.partition, first.offset)
            headers = dict(first.headers or ())
            context = structlog.contextvars.bound_contextvars(
                topic=first.topic,
                partition=first.partition,
                offset=first.offset,
                event_id=headers.get("event_id", b"").decode("utf-8", "replace") or None,
            )
            try:
                # A batch handler refuses its oversized records itself.
                if not batch and (too_big := oversized(first)) is not None:
                    raise too_big
                with context:
                    result = await call_next(msg)
            except Exception as error:
                attempt = attempts.get(position, 0) + 1
                pause = retry_pause(error, attempt, batch)
                if pause is not None:
                    attempts[position] = attempt
                    get_logger(component="dead_letter", consumer=consumer).warning(
                        "transient_failure_will_retry",
                        topic=first.topic,
                        offset=first.offset,
                        messages=len(records),
                        attempt=attempt,
                        error=repr(error)[:300],
                    )
                    await asyncio.sleep(pause)
                    raise
                attempts.pop(position, None)
                broker: KafkaBroker = self.context.get("broker")
                for record in records:
                    await dead_letter(broker, record, error, consumer)
                return None
            attempts.pop(position, None)
            return result

    return DeadLetter


async def dead_letter(broker: KafkaBroker, record: Record, error: BaseException, consumer: str) -> None:
    """Send a message its consumer cannot process to `<topic>.dlq`, with the reason and the original
    position in headers, and log it."""
    headers = dead_letter_headers(record, error, consumer)
    await broker.publish(
        record.value or b"", dead_letter_topic(record.topic), key=record.key, headers=headers
    )


def dead_letter_headers(record: Record, error: BaseException, consumer: str) -> dict[str, str]:
    """The record's own headers, and why it is dead-lettered, where it was and who refused it; logged."""
    headers = {name: value.decode("utf-8", "replace") for name, value in (record.headers or ())}
    headers.update(
        {
            "dlq-error": refusal_reason(error, record.topic)[:ERROR_HEADER_LIMIT],
            "dlq-error-type": type(error).__name__,
            "dlq-original-topic": record.topic,
            "dlq-original-partition": str(record.partition),
            "dlq-original-offset": str(record.offset),
            "dlq-consumer": consumer,
            "dlq-failed-at": datetime.now(UTC).isoformat(),
        }
    )
    get_logger(component="dead_letter", consumer=consumer).error(
        "message_dead_lettered",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error_type=type(error).__name__,
        error=refusal_reason(error, record.topic)[:300],
    )
    return headers


def consumer_group(service: str, party: str = "") -> str:
    """One group per service, over every topic it consumes: its workers share each topic's partitions. A
    party that runs the service for its own part (a factory's agent for its sites) has a group of its own,
    so that it reads every record, not a share of them."""
    return f"{service}.{party}.events" if party else f"{service}.events"


def subscriber_options(
    service: str, settings: Settings, broadcast_topic: str | None = None, party: str = ""
) -> dict[str, Any]:
    """Consumer settings; a broadcast subscriber (of one topic) has a group of its own, so every worker reads
    everything."""
    group = (
        f"{service}.{broadcast_topic}.{uuid.uuid4().hex[:12]}"
        if broadcast_topic
        else consumer_group(service, party)
    )
    return {
        "group_id": group,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.session_timeout_ms // 3,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "title": f"{service}:{broadcast_topic}" if broadcast_topic else service,
    }


def transport_security(settings: Settings) -> BaseSecurity | None:
    """The configured Kafka transport, for FastStream; `client_options` turns it into aiokafka's options."""
    protocol = settings.kafka_security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"KAFKA_SECURITY_PROTOCOL is {protocol!r}: use one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if protocol == "PLAINTEXT":
        return None
    context = create_ssl_context(cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None)
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context)
    scram = SCRAM_MECHANISMS.get(settings.kafka_sasl_mechanism)
    if scram is None:
        raise ValueError(
            f"KAFKA_SASL_MECHANISM is {settings.kafka_sasl_mechanism!r}: use {' or '.join(SCRAM_MECHANISMS)}"
        )
    if not settings.kafka_username or settings.kafka_password_file is None:
        raise ValueError("SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE")
    password = settings.kafka_password_file.read_text(encoding="utf-8").strip()
    return scram(settings.kafka_username, password, ssl_context=context)


def client_options(security: BaseSecurity | None) -> dict[str, Any]:
    """aiokafka's keyword arguments for a transport (FastStream's own translation)."""
    return parse_security(security)


def build_broker(settings: Settings, service: str) -> KafkaBroker:
    return KafkaBroker(
        settings.bootstrap_servers,
        security=transport_security(settings),
        client_id=f"sovereign-{service}",
        enable_idempotence=settings.idempotent_producer,
        acks="all",
        max_request_size=BROKER_MESSAGE_MAX_BYTES,
        # With aiokafka's 16 KiB batches, each record past 16 KiB waits for the sender to drain the one
        # before it, an event-loop turn apiece: behind a busy consumer, a relay batch of decisions took
        # seconds. A batch as large as the broker takes makes enqueueing a relay batch one step.
        max_batch_size=BROKER_MESSAGE_MAX_BYTES,
        middlewares=[dead_letter_middleware(service)],
        logger=None,
    )


def all_topics(tenant_ids: Iterable[str]) -> list[str]:
    """The shared topics, their dead-letter topics and the streams of the given tenants."""
    return [
        *TOPICS,
        *(dead_letter_topic(topic) for topic in TOPICS),
        *(tenant_stream(tenant) for tenant in sorted(tenant_ids)),
    ]


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[str], partitions: int, security: BaseSecurity | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(security))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service created them first
                await admin.create_topics(missing)
    finally:
        await admin.close()


def _destinations(row: OutboxMessage, tenants_with_streams: frozenset[str]) -> list[str]:
    """The row's topic and the tenant's stream it also goes to. The stream of a tenant the registry does not
    know is left out: that topic does not exist, and waiting for it would hold up everything behind it."""
    destinations = []
    for topic in filter(None, (row.topic, row.also_to)):
        tenant = stream_tenant(topic)
        if tenant is None or tenant in tenants_with_streams:
            destinations.append(topic)
        else:
            get_logger(component="outbox_relay").info(
                "tenant_stream_skipped", topic=topic, event_id=row.headers.get("event_id")
            )
    return destinations


# What a broker (or the client, before sending) refuses whatever the number of tries: the record itself is
# wrong for it. Anything else (a timeout, a leader moving, a connection lost) may pass when tried again.
REFUSED_FOR_GOOD: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
    PolicyViolationError,
)


def _refusal(topic: str, error: Exception) -> str:
    return f"{topic} refused it for good: {type(error).__name__}: {error}"


async def publish_outbox_rows(
    broker: KafkaBroker, tenants_with_streams: frozenset[str], rows: Sequence[OutboxMessage]
) -> dict[int, str]:
    """Enqueue all rows in order, then wait for every acknowledgement (aiokafka batches them). Returns the
    rows refused for good (at any of their destinations), by id, with the reason; any other failure raises,
    and the relay tries the batch again."""
    refused: dict[int, str] = {}
    pending: list[tuple[OutboxMessage, str, Awaitable[Any]]] = []
    for row in rows:
        assert row.id is not None, "a row the relay leased has its id"
        for topic in _destinations(row, tenants_with_streams):
            try:
                sent = await broker.publish(
                    row.payload,
                    topic,
                    key=row.key.encode(),
                    headers={**row.headers, "content-type": "application/json"},
                    no_confirm=True,
                )
            except REFUSED_FOR_GOOD as error:  # refused by the client before it was sent
                refused.setdefault(row.id, _refusal(topic, error))
                continue
            pending.append((row, topic, sent))
    for row, topic, acknowledgement in pending:
        try:
            await acknowledgement
        except REFUSED_FOR_GOOD as error:
            assert row.id is not None
            refused.setdefault(row.id, _refusal(topic, error))
    return refused
