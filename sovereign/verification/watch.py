"""Following events as a client does: a consumer with no group, assigned every partition of some topics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.security import BaseSecurity
from pydantic import ValidationError

from contracts import AnyEvent, model_for
from services.shared.embedded_broker import FETCH_MAX_WAIT_MS
from services.shared.kafka import client_options


class UnknownTopicError(LookupError):
    """A topic to watch that the broker does not have."""


class EventWatcher:
    """Reads the given topics from their current end (or from the beginning), decoding each event."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        from_beginning: bool = False,
        security: BaseSecurity | None = None,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    ):
        # A watcher is there to see events as they come: its fetches are short on any broker.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=fetch_max_wait_ms,
            **client_options(security),
        )
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._topics = list(topics)
        self._from_beginning = from_beginning
        self.undecodable = 0

    async def __aenter__(self) -> EventWatcher:
        await self._consumer.start()
        try:
            partitions = await self._partitions()
        except UnknownTopicError:
            await self._consumer.stop()
            raise
        self._consumer.assign(partitions)
        if self._from_beginning:
            await self._consumer.seek_to_beginning(*partitions)
        else:
            await self._consumer.seek_to_end(*partitions)
            for partition in partitions:  # resolve the end offsets now, before anything is produced
                await self._consumer.position(partition)
        return self

    async def _partitions(self) -> list[TopicPartition]:
        for _ in range(20):  # metadata for a just-created topic can lag a moment
            found = await topic_partitions(self._bootstrap_servers, self._topics, self._security)
            missing = [topic for topic in self._topics if not found.get(topic)]
            if not missing:
                return [partition for topic in self._topics for partition in found[topic]]
            await asyncio.sleep(0.1)
        raise UnknownTopicError(missing[0])

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self._consumer.stop()

    async def caught_up(self) -> bool:
        """Whether every record its topics hold now has been handed out."""
        partitions = list(self._consumer.assignment())
        ends = await self._consumer.end_offsets(partitions)
        return all([await self._consumer.position(partition) >= ends[partition] for partition in partitions])

    async def events(self, poll_ms: int = 200) -> AsyncIterator[list[AnyEvent]]:
        """Batches of decoded events; an empty batch when nothing arrived within poll_ms."""
        while True:
            batches = await self._consumer.getmany(timeout_ms=poll_ms)
            decoded: list[AnyEvent] = []
            for records in batches.values():
                for record in records:
                    model = model_for(record.topic, header(record, "event_type"))
                    if model is None:
                        continue
                    try:
                        decoded.append(model.model_validate_json(record.value))
                    except ValidationError:
                        self.undecodable += 1
            yield decoded


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    value = dict(record.headers or ()).get(name)
    return value.decode("utf-8", "replace") if value is not None else None


async def produce(
    bootstrap_servers: str,
    events: Sequence[tuple[AnyEvent, str]],
    idempotent: bool,
    security: BaseSecurity | None = None,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        enable_idempotence=idempotent,
        acks="all",
        **client_options(security),
    )
    await producer.start()
    try:
        pending = [
            await producer.send(
                event.type,
                event.model_dump_json().encode(),
                key=key.encode(),
                headers=[("content-type", b"application/json"), ("event_id", str(event.id).encode())],
            )
            for event, key in events
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# The cluster id Tansu 0.6 reports (Apache Kafka's is a random base64 UUID).
TANSU_CLUSTER_ID = "tansu_cluster"


async def is_tansu(bootstrap_servers: str, security: BaseSecurity | None = None) -> bool:
    """Whether the broker is Tansu, whose ListOffsets(latest) answers short of a partition's end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(security))
    await admin.start()
    try:
        return bool((await admin.describe_cluster())["cluster_id"] == TANSU_CLUSTER_ID)
    finally:
        await admin.close()


async def topic_partitions(
    bootstrap_servers: str, topics: Sequence[str], security: BaseSecurity | None = None
) -> dict[str, list[TopicPartition]]:
    """Each existing topic's partitions, from the broker's metadata (a missing topic is left out). The
    metadata of every topic is asked for: a request naming topics lets a broker that auto-creates topics
    (Tansu does) create the missing ones."""
    wanted = set(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(security))
    await admin.start()
    try:
        described = await admin.describe_topics(None)
    finally:
        await admin.close()
    return {
        topic["topic"]: sorted(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
        for topic in described
        if topic["topic"] in wanted and not topic["error_code"] and topic["partitions"]
    }


async def _listed_ends(
    bootstrap_servers: str, topics: Sequence[str], security: BaseSecurity | None
) -> dict[TopicPartition, int]:
    """ListOffsets(latest) for every partition of the topics."""
    found = await topic_partitions(bootstrap_servers, topics, security)
    partitions = [partition for of_topic in found.values() for partition in of_topic]
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, **client_options(security))
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def each_record(
    bootstrap_servers: str, topics: Sequence[str], quiet_ms: int = 500, security: BaseSecurity | None = None
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the topics from the beginning: up to each partition's end on Apache Kafka; on Tansu,
    whose ends fall short, until nothing more arrives for quiet_ms."""
    ends = (
        None
        if await is_tansu(bootstrap_servers, security)
        else await _listed_ends(bootstrap_servers, topics, security)
    )
    remaining = {partition: end for partition, end in (ends or {}).items() if end}
    if ends is not None and not remaining:
        return  # nothing to read (and a consumer stopped with nothing assigned raises CancelledError)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(security),
    )
    await consumer.start()
    try:
        if ends is None:
            consumer.subscribe(list(topics))
            while batches := await consumer.getmany(timeout_ms=quiet_ms):
                for batch in batches.values():
                    for record in batch:
                        yield record
            return
        consumer.assign(list(remaining))
        while remaining:
            for batch in (await consumer.getmany(*remaining, timeout_ms=quiet_ms)).values():
                for record in batch:
                    yield record
            for partition in list(remaining):
                if await consumer.position(partition) >= remaining[partition]:
                    del remaining[partition]
    finally:
        await consumer.stop()


async def read_records(
    bootstrap_servers: str, topics: Sequence[str], quiet_ms: int = 500, security: BaseSecurity | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    return [record async for record in each_record(bootstrap_servers, topics, quiet_ms, security)]


async def partition_ends(
    bootstrap_servers: str, topics: Sequence[str], security: BaseSecurity | None = None
) -> dict[TopicPartition, int]:
    """Each partition's end (last offset + 1) that holds anything: ListOffsets(latest), except on Tansu,
    where each partition is read through (without keeping the records)."""
    if not await is_tansu(bootstrap_servers, security):
        listed = await _listed_ends(bootstrap_servers, topics, security)
        return {partition: end for partition, end in listed.items() if end}
    ends: dict[TopicPartition, int] = {}
    async for record in each_record(bootstrap_servers, topics, security=security):
        partition = TopicPartition(record.topic, record.partition)
        ends[partition] = max(ends.get(partition, 0), record.offset + 1)
    return ends


async def lag_by_group(
    bootstrap_servers: str, groups: Mapping[str, Sequence[str]], security: BaseSecurity | None = None
) -> dict[str, dict[str, int]]:
    """For each consumer group, how many messages of each of its topics it has not committed yet."""
    topics = sorted({topic for group_topics in groups.values() for topic in group_topics})
    ends = await partition_ends(bootstrap_servers, topics, security=security) if topics else {}
    lag: dict[str, dict[str, int]] = {}
    for group, group_topics in groups.items():
        # A consumer that never subscribes joins no group: it only reads the group's committed offsets.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            **client_options(security),
        )
        await consumer.start()
        try:
            lag[group] = dict.fromkeys(group_topics, 0)
            for partition, end in ends.items():
                if partition.topic in group_topics:
                    lag[group][partition.topic] += max(0, end - (await consumer.committed(partition) or 0))
        finally:
            await consumer.stop()
    return lag


async def consumer_lag(bootstrap_servers: str, group_id: str, topic: str) -> int:
    """How many messages of `topic` the consumer group has not committed yet."""
    return (await lag_by_group(bootstrap_servers, {group_id: [topic]}))[group_id][topic]
