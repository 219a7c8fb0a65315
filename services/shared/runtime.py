"""Running one service: its broker, its outbox relay and its background loops, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
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
from services.shared.arrivals import Turns, keep
from services.shared.batch import Record, Refusal, apply_in_savepoint, handle_batch, oversized, parse_records
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
    consumer_group,
    dead_letter,
    dead_letter_headers,
    ensure_topics,
    publish_outbox_rows,
    subscriber_options,
    transport_security,
)
from services.shared.logging import get_logger
from services.shared.outbox import OUTBOX_TABLES, OutboxRelay, add_dead_letter
from services.shared.settings import Settings

SHUTDOWN_DRAIN_SECONDS = 5.0
# The consumer counts as busy for this long after a batch: it takes the arrivals' turns itself meanwhile.
CONSUMER_BUSY_SECONDS = 0.1
# Between two turns the loop takes, so that a record arriving is fetched without waiting for many turns.
TURN_PAUSE_SECONDS = 0.005
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
    # Per topic, what answers a record that is not a valid event: True if its sender was proved and told
    # (the record is then done with), False to dead-letter it.
    answers: dict[str, Callable[[Session, Record, BaseException], bool]] = field(default_factory=dict)
    # Topics whose records are kept as they arrive and handled in turns, lane by lane (set by `consume`).
    arrival_topics: frozenset[str] = frozenset()
    # Set when records may be waiting their turn (so at start: a restarted worker finds what others kept).
    arrivals_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    turns: Turns = field(default_factory=Turns)
    # When the consumer last handled a batch (time.monotonic()).
    last_batch_at: float = 0.0
    # Who runs this service for a part of its own (kafka.consumer_group), "" for the whole.
    party: str = ""

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
    models: Mapping[str, type[Event[Any]]], arrival_topics: frozenset[str]
) -> Callable[[StreamMessage[Any]], Awaitable[list[Event[Any]]]]:
    """Parse each record of a batch alone, as an event of its topic's model, so one bad record is refused
    alone; a record of an arrival topic (within its size) is left unread, to be kept for its turn. The
    handler's `events` are the good ones; the pairs of record and event, the refusals and the arrivals
    travel on the message."""

    async def decode(message: StreamMessage[Any]) -> list[Event[Any]]:
        events: list[tuple[Any, Event[Any]]] = []
        refused: list[Refusal] = []
        arrivals: list[Record] = []
        for record in message.raw_message:
            if record.topic in arrival_topics and oversized(record) is None:
                arrivals.append(record)
                continue
            parsed, refusals = parse_records(models[record.topic], [record])
            events += parsed
            refused += refusals
        message.parsed_batch = events, refused, arrivals  # type: ignore[attr-defined]
        return [event for _, event in events]

    return decode


def consume(service: Service, handlers: Handlers, arrival_topics: frozenset[str] = frozenset()) -> None:
    """Subscribe the service to each model's topic with one consumer, in one consumer group: what its
    topics have ready (up to the batch size, from any of them) is handled in one transaction, each event by
    its model's handler; then dead letters are sent, offsets committed and the outbox relay woken. One
    consumer per service, not per topic: each consumer fetches on its own, and an idle one polls the broker
    every fetch_max_wait_ms. Records of `arrival_topics` are kept as they arrive and handled in turns
    (arrivals.py)."""
    service.arrival_topics = arrival_topics
    models = {model.model_fields["type"].default: model for model in handlers}
    by_model = dict(handlers)

    def handle(session: Session, event: Event[Any]) -> None:
        by_model[type(event)](session, event)

    async def handler(events: list[Event[Any]], message: KafkaMessage) -> None:
        parsed, refused, arrivals = message.parsed_batch  # type: ignore[attr-defined]
        if arrivals:
            with unit_of_work(service.engine) as session:
                lanes = keep(session, arrivals)
            service.turns.noticed(lanes)
        refused = _unanswered(service, refused) + handle_batch(service.engine, handle, parsed)
        service.crash_points.reached(HANDLER_COMMITTED)
        for record, error in refused:
            await dead_letter(service.broker, record, error, service.name)
        if arrivals or service.arrivals_waiting.is_set():
            # One turn in the consumer's own time, so that a steady flow never waits for the loop.
            service.arrivals_waiting.set()
            take_arrivals_turn(service)
        service.relay.wake()
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
        decoder=_batch_decoder(models, arrival_topics),
        **subscriber_options(service.name, service.settings, party=service.party),
    )(handler)
    service.handlers.update({topic: (model, by_model[model]) for topic, model in models.items()})


def take_arrivals_turn(service: Service) -> int:
    """One turn over the kept arrivals, in a transaction of its own; clears `arrivals_waiting` when none was
    left. Each record is read, answered or dead-lettered (through the outbox) and handled as the consumer
    would have, within a savepoint of its own."""
    with unit_of_work(service.engine) as session:
        handled = service.turns.take(session, partial(_handle_arrival, service))
    if handled:
        service.relay.wake()
    else:
        service.arrivals_waiting.clear()
    return handled


def _handle_arrival(service: Service, session: Session, record: Record) -> None:
    model, handle = service.handlers[record.topic]
    events, refused = parse_records(model, [record])
    refused += [
        refusal for record, event in events if (refusal := apply_in_savepoint(session, handle, record, event))
    ]
    for record, error in refused:
        if not _answered(service, partial(_savepoint, session), record, error):
            headers = dead_letter_headers(record, error, service.name)
            add_dead_letter(session, record.topic, record.key, record.value, headers)


@contextlib.contextmanager
def _savepoint(session: Session) -> Iterator[Session]:
    with session.begin_nested():
        yield session


def _arrival_turns(service: Service) -> Callable[[], Coroutine[Any, Any, None]]:
    async def arrival_turns() -> None:
        """Turns over the kept arrivals while the consumer is idle (it takes one after each batch)."""
        service.arrivals_waiting.set()
        while True:
            await service.arrivals_waiting.wait()
            if time.monotonic() - service.last_batch_at < CONSUMER_BUSY_SECONDS:
                await asyncio.sleep(CONSUMER_BUSY_SECONDS)
                continue
            take_arrivals_turn(service)
            await asyncio.sleep(TURN_PAUSE_SECONDS)  # room for the consumer's next fetch

    return arrival_turns


def _unanswered(service: Service, refused: list[Refusal]) -> list[Refusal]:
    """The records not valid events whose senders no answer could be given to: those are dead-lettered.
    Each answer is a transaction of its own (this path is rare)."""
    in_transaction = partial(unit_of_work, service.engine)
    return [
        (record, error) for record, error in refused if not _answered(service, in_transaction, record, error)
    ]


def _answered(
    service: Service,
    scope: Callable[[], contextlib.AbstractContextManager[Session]],
    record: Record,
    error: BaseException,
) -> bool:
    """Whether the record's sender was proved and told why its record was refused (within `scope`): the
    record is then done with. A failed answer is logged; a database outage propagates, so the record is
    tried again."""
    answer = service.answers.get(record.topic)
    if answer is None:
        return False
    try:
        with scope() as session:
            return answer(session, record, error)
    except Exception as failure:
        if is_transient_database_error(failure):
            raise
        get_logger(component="runtime", topic=record.topic).error("answer_failed", error=repr(failure)[:300])
        return False


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
        register_worker(
            session, service.worker_id, service.consumed, consumer_group(service.name, service.party)
        )
    await start_broker(service.broker)
    mark_worker(service.engine, service.worker_id, ready=True)
    loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
        service.relay.run_forever,
        _heartbeat(service),
        *service.background,
        *([_arrival_turns(service)] if service.arrival_topics else []),
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
