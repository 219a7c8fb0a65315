"""Kafka wiring shared by every service: broker factory, dead-lettering, topic creation, outbox publishing.

Offsets are committed only after a handler returns (AckPolicy.NACK_ON_ERROR): a handler commits its effect,
its outbox rows and its inbox row in one transaction first, so a crash before the offset commit only causes
a redelivery, which the inbox turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from sqlalchemy.exc import IntegrityError

from contracts import TOPICS, dead_letter_topic
from services.shared.db import is_transient_database_error
from services.shared.logging import get_logger
from services.shared.outbox import OutboxMessage
from services.shared.settings import Settings

# A concurrent duplicate losing its race is retried this many times before the message is dead-lettered,
# so a message that always collides cannot stall its partition for ever.
MAX_TRANSIENT_ATTEMPTS = 5
# A database that is down or refusing connections is waited for, never a reason to dead-letter good
# messages: the same message is retried with this longest pause until the database is back.
MAX_RETRY_PAUSE_SECONDS = 5.0
ERROR_HEADER_LIMIT = 2000
# No event of this marketplace comes near this size; a bigger one is refused before it is parsed.
MAX_EVENT_BYTES = 256 * 1024


class PoisonMessage(ValueError):
    """A message that parses but can never be handled; it goes straight to the dead-letter topic."""


def retry_pause(error: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying a failed message, or None to dead-letter it."""
    pause = min(MAX_RETRY_PAUSE_SECONDS, 0.2 * 2.0**attempt)
    if is_transient_database_error(error):
        return pause
    # An IntegrityError here is a concurrent duplicate losing the race; the retry sees the winner's row.
    if isinstance(error, IntegrityError) and attempt < MAX_TRANSIENT_ATTEMPTS:
        return pause
    return None


def dead_letter_middleware(consumer: str) -> type[BaseMiddleware]:
    """Middleware around every handler: binds the message's position and event id to every log line, and
    sends a message the handler cannot process to `<topic>.dlq`, so the partition goes on."""
    attempts: dict[tuple[str, int, int], int] = {}
    log = get_logger(component="dead_letter", consumer=consumer)

    class DeadLetter(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            record = msg.raw_message
            position = (record.topic, record.partition, record.offset)
            headers = dict(record.headers or ())
            context = structlog.contextvars.bound_contextvars(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                event_id=headers.get("event_id", b"").decode("utf-8", "replace") or None,
            )
            try:
                size = len(record.value or b"")
                if size > MAX_EVENT_BYTES:
                    raise PoisonMessage(f"the event is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit")
                with context:
                    result = await call_next(msg)
            except Exception as error:
                attempt = attempts.get(position, 0) + 1
                pause = retry_pause(error, attempt)
                if pause is not None:
                    attempts[position] = attempt
                    log.warning(
                        "transient_failure_will_retry",
                        topic=record.topic,
                        offset=record.offset,
                        attempt=attempt,
                        error=repr(error)[:300],
                    )
                    await asyncio.sleep(pause)
                    raise
                attempts.pop(position, None)
                broker: KafkaBroker = self.context.get("broker")
                await publish_dead_letter(broker, record, error, consumer)
                log.error(
                    "message_dead_lettered",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error_type=type(error).__name__,
                    error=str(error)[:300],
                )
                return None
            attempts.pop(position, None)
            return result

    return DeadLetter


async def publish_dead_letter(broker: KafkaBroker, record: Any, error: BaseException, consumer: str) -> None:
    headers = {name: value.decode("utf-8", "replace") for name, value in (record.headers or ())}
    headers.update(
        {
            "dlq-error": f"{type(error).__name__}: {error}"[:ERROR_HEADER_LIMIT],
            "dlq-error-type": type(error).__name__,
            "dlq-original-topic": record.topic,
            "dlq-original-partition": str(record.partition),
            "dlq-original-offset": str(record.offset),
            "dlq-consumer": consumer,
            "dlq-failed-at": datetime.now(UTC).isoformat(),
        }
    )
    await broker.publish(
        record.value or b"", dead_letter_topic(record.topic), key=record.key, headers=headers
    )


def consumer_group(service: str, topic: str) -> str:
    # One group per (service, topic): workers of a service share each topic's partitions, and a member
    # joining for one topic never forces a rebalance of another.
    return f"{service}.{topic}"


def subscriber_options(
    service: str, topic: str, session_timeout_ms: int, broadcast: bool = False
) -> dict[str, Any]:
    """Consumer settings; a broadcast subscriber has a group of its own, so every worker reads everything."""
    group = consumer_group(service, topic) + (f".{uuid.uuid4().hex[:12]}" if broadcast else "")
    return {
        "group_id": group,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": session_timeout_ms // 3,
        "title": f"{service}:{topic}",
    }


def build_broker(settings: Settings, service: str) -> KafkaBroker:
    return KafkaBroker(
        settings.bootstrap_servers,
        client_id=f"sovereign-{service}",
        enable_idempotence=settings.idempotent_producer,
        acks="all",
        middlewares=[dead_letter_middleware(service)],
        logger=None,
    )


def all_topics() -> list[str]:
    return [*TOPICS, *(dead_letter_topic(topic) for topic in TOPICS)]


async def ensure_topics(bootstrap_servers: str, topics: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
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


async def publish_outbox_rows(broker: KafkaBroker, rows: Sequence[OutboxMessage]) -> None:
    """Enqueue all rows in order, then wait for every acknowledgement (aiokafka batches them)."""
    pending = [
        await broker.publish(
            row.payload,
            row.topic,
            key=row.key.encode(),
            headers={**row.headers, "content-type": "application/json"},
            no_confirm=True,
        )
        for row in rows
    ]
    await asyncio.gather(*pending)
