"""Running one service: its broker, its outbox relay and its background loops, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Union

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from sqlalchemy import Engine, Table
from sqlmodel import Session

from contracts import Event, tenant_stream
from contracts.events import TOLD_TO_TENANT
from services.shared.batch import Record, Refusal, handle_batch, parse_records
from services.shared.crash_points import HANDLER_COMMITTED, OUTBOX_PUBLISHED, CrashPoints
from services.shared.db import (
    create_service_engine,
    database_url_for,
    is_transient_database_error,
    table_of,
    unit_of_work,
)
from services.shared.health import HEARTBEAT_SECONDS, WorkerRow, mark_worker, new_worker_id, register_worker
from services.shared.inbox import ProcessedEvent
from services.shared.kafka import (
    all_topics,
    build_broker,
    dead_letter,
    ensure_topics,
    publish_outbox_rows,
    subscriber_options,
    transport_security,
)
from services.shared.logging import get_logger
from services.shared.outbox import OUTBOX_TABLES, OutboxRelay
from services.shared.settings import Settings

SHUTDOWN_DRAIN_SECONDS = 5.0
# A background loop that fails (the database went away, say) is restarted after this pause.
BACKGROUND_RESTART_SECONDS = 1.0


@dataclass
class Service:
    name: str
    settings: Settings
    broker: KafkaBroker
    engine: Engine
    relay: OutboxRelay
    crash_points: CrashPoints
    # The registered tenants: each has a stream of its own.
    tenant_ids: frozenset[str]
    worker_id: str = field(default_factory=new_worker_id)
    # Each topic consumed in the service's consumer groups (not broadcast subscriptions): its event model and
    # the handler its batches go through.
    handlers: dict[str, tuple[type[Event], Callable[[Session, Any], None]]] = field(default_factory=dict)  # type: ignore[type-arg]
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Run once in a transaction when the service starts, before it consumes.
    on_start: list[Callable[[Session], None]] = field(default_factory=list)
    # Per topic, what answers a record that is not a valid event: True if its sender was proved and told
    # (the record is then done with), False to dead-letter it.
    answers: dict[str, Callable[[Session, Record, BaseException], bool]] = field(default_factory=dict)
    # Run after each consumed batch, in the consumer's turn: work that waits for the consumer to make room
    # (placement's waiting requests), so that it never delays the next batch by more than itself.
    after_batch: list[Callable[[], object]] = field(default_factory=list)
    # When the consumer last handled a batch (time.monotonic()).
    last_batch_at: float = 0.0

    @property
    def consumed(self) -> list[str]:
        return list(self.handlers)


def new_service(name: str, settings: Settings, tables: Sequence[Table], tenant_ids: Iterable[str]) -> Service:
    """Broker, database (with the outbox and inbox tables) and relay for one service, which copies each
    event about a registered tenant's job to that tenant's stream."""
    broker = build_broker(settings, name)
    engine = create_service_engine(
        database_url_for(settings, name),
        name,
        [*OUTBOX_TABLES, table_of(ProcessedEvent), table_of(WorkerRow), *tables],
        schema_prefix=settings.database_schema_prefix,
    )
    crash_points = CrashPoints(settings.crash_points)
    registered = frozenset(tenant_ids)
    relay = OutboxRelay(
        engine,
        partial(publish_outbox_rows, broker, registered),
        settings.outbox_poll_seconds,
        after_publish=partial(crash_points.reached, OUTBOX_PUBLISHED),
    )
    return Service(
        name=name,
        settings=settings,
        broker=broker,
        engine=engine,
        relay=relay,
        crash_points=crash_points,
        tenant_ids=registered,
    )


Handlers = Mapping[type[Event[Any]], Callable[[Session, Any], None]]


def _batch_decoder(
    models: Mapping[str, type[Event[Any]]],
) -> Callable[[StreamMessage[Any]], Awaitable[list[Event[Any]]]]:
    """Parse each record of a batch alone, as an event of its topic's model, so one bad record is refused
    alone. The handler's `events` are the good ones; the pairs of record and event, and the refusals,
    travel on the message."""

    async def decode(message: StreamMessage[Any]) -> list[Event[Any]]:
        events: list[tuple[Any, Event[Any]]] = []
        refused: list[Refusal] = []
        for record in message.raw_message:
            parsed, refusals = parse_records(models[record.topic], [record])
            events += parsed
            refused += refusals
        message.parsed_batch = events, refused  # type: ignore[attr-defined]
        return [event for _, event in events]

    return decode


def consume(service: Service, handlers: Handlers) -> None:
    """Subscribe the service to each model's topic with one consumer, in one consumer group: what its
    topics have ready (up to the batch size, from any of them) is handled in one transaction, each event by
    its model's handler; then dead letters are sent, offsets committed and the outbox relay woken. One
    consumer per service, not per topic: each consumer fetches on its own, and an idle one polls the broker
    every fetch_max_wait_ms."""
    models = {model.model_fields["type"].default: model for model in handlers}
    by_model = dict(handlers)

    def handle(session: Session, event: Event[Any]) -> None:
        by_model[type(event)](session, event)

    async def handler(events: list[Event[Any]], message: KafkaMessage) -> None:
        parsed, refused = message.parsed_batch  # type: ignore[attr-defined]
        refused = _unanswered(service, refused) + handle_batch(service.engine, handle, parsed)
        service.crash_points.reached(HANDLER_COMMITTED)
        for record, error in refused:
            await dead_letter(service.broker, record, error, service.name)
        service.relay.wake()
        for follow_up in service.after_batch:
            follow_up()
        service.last_batch_at = time.monotonic()

    # FastStream reads the annotation to document the payload of each topic (the export narrows it to the
    # topic's own event); the events are already parsed.
    handler.__annotations__ = {
        "events": list[Union[tuple(handlers)]],  # type: ignore[misc]  # noqa: UP007
        "message": KafkaMessage,
        "return": None,
    }
    handler.__name__ = f"on_{service.name.replace('-', '_')}_events"
    service.broker.subscriber(
        *models,
        batch=True,
        max_records=service.settings.batch_max_events,
        batch_timeout_ms=service.settings.batch_wait_ms,
        decoder=_batch_decoder(models),
        **subscriber_options(service.name, service.settings),
    )(handler)
    service.handlers.update({topic: (model, by_model[model]) for topic, model in models.items()})


def _unanswered(service: Service, refused: list[Refusal]) -> list[Refusal]:
    """The records not valid events whose senders no answer could be given to: those are dead-lettered.
    Each answer is a transaction of its own (this path is rare); a database outage propagates, so the batch
    is redelivered."""
    left: list[Refusal] = []
    for record, error in refused:
        answer = service.answers.get(record.topic)
        try:
            if answer is not None:
                with unit_of_work(service.engine) as session:
                    if answer(session, record, error):
                        continue
        except Exception as failure:
            if is_transient_database_error(failure):
                raise
            log = get_logger(component="runtime", topic=record.topic)
            log.error("answer_failed", error=repr(failure)[:300])
        left.append((record, error))
    return left


# How the AsyncAPI documents and the ACLs name the tenant streams a service writes.
TENANT_STREAMS_CHANNEL = tenant_stream("{tenant_id}")


def document_publishers(
    broker: KafkaBroker,
    events: Sequence[type[Event]],  # type: ignore[type-arg]
    service: str,
    relayed_to_tenants: Sequence[type[Event]] = (),  # type: ignore[type-arg]
) -> None:
    """Declare what the service publishes (through its outbox) so the AsyncAPI document shows it: each event
    on its topic and, if the marketplace tells tenants of it or the service relays it, on tenants' streams."""
    for model in events:
        topic = model.model_fields["type"].default
        broker.publisher(
            topic, schema=model, title=f"{service}:{topic}", description="Published through the outbox."
        )
    told = [model for model in events if model.model_fields["type"].default in TOLD_TO_TENANT]
    for model in [*told, *relayed_to_tenants]:
        topic = model.model_fields["type"].default
        broker.publisher(
            TENANT_STREAMS_CHANNEL,
            schema=model,
            title=f"{service}:{TENANT_STREAMS_CHANNEL}:{topic}",
            description=f"A copy of each {topic} on the stream of the tenant it is about.",
        )


async def start_broker(broker: KafkaBroker) -> None:
    """Like KafkaBroker.start(), but starting the subscribers concurrently: a consumer's first group join
    waits out the broker's initial rebalance delay (5 s on Tansu), and one after another those add up."""
    await broker.connect()
    await asyncio.gather(*(subscriber.start() for subscriber in broker.subscribers))
    for publisher in broker.publishers:
        await publisher.start()
    broker.running = True


async def _supervised(loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background loop for as long as the service runs, restarting it after a failure."""
    log = get_logger(component="runtime", loop=loop.__name__)
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("background_loop_failed", error=repr(error)[:300])
            await asyncio.sleep(BACKGROUND_RESTART_SECONDS)


def _heartbeat(service: Service) -> Callable[[], Coroutine[Any, Any, None]]:
    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            mark_worker(service.engine, service.worker_id)

    return heartbeat


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    log = get_logger(component="runtime", worker_id=service.worker_id)
    if service.settings.create_topics:
        await ensure_topics(
            service.settings.bootstrap_servers,
            all_topics(service.tenant_ids),
            service.settings.topic_partitions,
            transport_security(service.settings),
        )
    with unit_of_work(service.engine) as session:
        register_worker(session, service.worker_id, service.consumed)
        for start in service.on_start:
            start(session)
    await start_broker(service.broker)
    mark_worker(service.engine, service.worker_id, ready=True)
    loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
        service.relay.run_forever,
        _heartbeat(service),
        *service.background,
    ]
    tasks = [asyncio.create_task(_supervised(loop)) for loop in loops]
    log.info("service_started", bootstrap_servers=service.settings.bootstrap_servers)
    try:
        yield service
    finally:
        # Stop taking messages first; a handler in flight finishes (its effect is one transaction that
        # never awaits), and a message whose offset is not committed yet is redelivered to another worker.
        await asyncio.gather(*(subscriber.stop() for subscriber in service.broker.subscribers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Publish what the last handlers wrote; whatever is left is published at the next start.
        drained = True
        try:
            await asyncio.wait_for(service.relay.drain(), SHUTDOWN_DRAIN_SECONDS)
        except Exception as error:
            drained = False
            log.warning("outbox_left_for_next_start", error=repr(error)[:300])
        await service.broker.stop()
        with contextlib.suppress(Exception):
            mark_worker(service.engine, service.worker_id, stopped=True)
        service.engine.dispose()
        log.info("service_stopped", outbox_drained=drained)


async def serve_until_signalled(service: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(service):
        await stop.wait()
