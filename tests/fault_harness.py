"""The fault suite's harness: the broker and every service as real processes, a seeded workload, faults, and
the invariants checked from the databases and the topics once the system has settled.

A failing run prints its seed; `FAULT_SEED=<seed> pytest tests/test_faults.py` replays the same workload
and the same fault schedule (process timing still varies, which is the point of running many seeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka.errors import KafkaConnectionError
from sqlalchemy import Engine, Table, func
from sqlmodel import Session, col, select

from contracts import AnyEvent
from contracts.events import (
    CapacityUpdated,
    CapacityUpdatedEvent,
    JobRequest,
)
from services.billing.storage import ChargeRow
from services.factory_agent.storage import RunRow, RunState
from services.placement.logic import TERMINAL_STATES
from services.placement.storage import JobRow, SiteRow
from services.registry import SERVICES as REGISTRY
from services.shared.db import create_service_engine, database_url_for, table_of
from services.shared.domain.catalogue import load_catalogue
from services.shared.embedded_broker import EmbeddedBroker
from services.shared.health import WorkerRow
from services.shared.kafka import all_topics, ensure_topics, transport_security
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT, Settings
from sovereign.embedded import embedded_service_env, start_service
from sovereign.stack.kafka import ADMIN, LocalKafka
from sovereign.status import collect_status
from sovereign.submit import cancel_event
from sovereign.verification.history import collect_history
from sovereign.verification.invariants import History, Violation, check
from sovereign.verification.watch import produce
from sovereign.verification.workload import generate, request_events
from tests.conftest import TEST_KEYS

SERVICES = tuple(REGISTRY)
# The principal a factory's own events go out as (the factory agent's, as in compose).
FACTORY_PRINCIPAL = "factory-agent"
# Simulated hours per real second: the longest workload job (48 h) runs for 4 s.
TIME_SCALE = 12 * 3600.0
# Faster failure detection than the production default, so a killed member's partitions move on sooner.
SESSION_TIMEOUT_MS = 6000
# Tansu holds every fetch this long, and a cluster here mostly waits: at the embedded 10 ms an idle cluster
# kept 1.3 cores busy polling (0.6 at 50 ms), starving the rest of the suite. Latency is not under test here.
# (On Apache Kafka, the principal's settings give the production 500 ms.)
FETCH_MAX_WAIT_MS = 50


@dataclass
class Worker:
    service: str
    index: int
    process: subprocess.Popen[bytes]
    log_path: Path
    crash_at: str = ""

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Cluster:
    root: Path
    settings: Settings  # how the harness reads the databases and the topics
    service_env: dict[str, str]  # how the services are started
    # Apache Kafka with SASL and ACLs, or None for Tansu: then each process is its own principal.
    kafka: LocalKafka | None = None
    workers: list[Worker] = field(default_factory=list)
    starts: int = 0
    supervised: bool = False  # a supervisor restarts dead workers
    _engines: dict[str, Engine] = field(default_factory=dict)

    # --- processes -------------------------------------------------------------------------------------

    def start(self, service: str, index: int = 0, crash_at: str = "") -> Worker:
        self.starts += 1
        log_path = self.root / "logs" / f"{service}-{index}-{self.starts}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.service_env, **self.principal_env(service), "SOVEREIGN_CRASH_AT": crash_at}
        process = start_service(service, env, log_path)
        worker = Worker(service, index, process, log_path, crash_at)
        self.workers = [w for w in self.workers if (w.service, w.index) != (service, index)] + [worker]
        return worker

    def principal_env(self, principal: str) -> dict[str, str]:
        """The transport settings compose gives a service, on Apache Kafka (none on Tansu)."""
        return {} if self.kafka is None else self.kafka.client_env(principal)

    async def produce_as(self, principal: str, events: Sequence[tuple[AnyEvent, str]]) -> None:
        """Send events as a tenant or a factory would: as its own principal on Apache Kafka. A tenant the
        registry does not know has no principal there: its requests go in as the admin's, to be refused by
        placement as they would be from anyone."""
        if self.kafka is None:
            await produce(self.settings.bootstrap_servers, events, idempotent=False)
            return
        if not self.kafka.password_file(principal).exists():
            principal = ADMIN
        security = transport_security(self.kafka.settings_for(principal))
        # A sender retries while the broker is down (a crash test restarts it); a copy sent twice is what
        # the services' idempotence is for.
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            try:
                await produce(self.settings.bootstrap_servers, events, idempotent=True, security=security)
                return
            except KafkaConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(1)

    def worker(self, service: str, index: int = 0) -> Worker:
        return next(w for w in self.workers if (w.service, w.index) == (service, index))

    def signal(self, worker: Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signum)
        if signum == signal.SIGKILL:
            worker.process.wait()

    async def wait_ready(self, workers: Sequence[Worker], within: float = 90.0) -> None:
        """Until each worker's heartbeat row says it consumes (or fail with its log's tail)."""
        deadline = asyncio.get_running_loop().time() + within
        waiting = list(workers)
        while waiting:
            for worker in list(waiting):
                if not worker.alive():
                    raise AssertionError(
                        f"{worker.name} exited {worker.process.returncode}:\n{self.tail(worker)}"
                    )
                with Session(self.engine(worker.service)) as session:
                    row = session.exec(
                        select(WorkerRow).where(
                            WorkerRow.pid == worker.process.pid, col(WorkerRow.ready_at).is_not(None)
                        )
                    ).first()
                if row is not None:
                    waiting.remove(worker)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not ready within {within:.0f} s: {[w.name for w in waiting]}")
            await asyncio.sleep(0.3)

    async def supervise(self, next_crash_at: Mapping[str, list[str]], restarted: list[Worker]) -> None:
        """Until cancelled: start again every worker that died, armed with its service's next crash points
        (unarmed once the list runs out), as a process supervisor would."""
        plans = {service: list(points) for service, points in next_crash_at.items()}
        self.supervised = True
        try:
            while True:
                for worker in [w for w in self.workers if not w.alive()]:
                    plan = plans.get(worker.service, [])
                    restarted.append(self.start(worker.service, worker.index, plan.pop(0) if plan else ""))
                await asyncio.sleep(0.2)
        finally:
            self.supervised = False

    async def stop_all(self) -> None:
        """SIGTERM every worker and wait; the event loop keeps running, so a proxy in it keeps forwarding."""
        for worker in self.workers:
            if worker.alive():
                self.signal(worker, signal.SIGCONT)
                self.signal(worker, signal.SIGTERM)
        for worker in self.workers:
            try:
                await asyncio.to_thread(worker.process.wait, 20)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for engine in self._engines.values():
            engine.dispose()

    def logs_with(self, text: str) -> list[str]:
        """The processes (by log file) whose log contains the text."""
        return sorted(
            path.stem
            for path in (self.root / "logs").glob("*-*.log")
            if text in path.read_text(errors="replace")
        )

    def tail(self, worker: Worker, lines: int = 30) -> str:
        return "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- the system's state ----------------------------------------------------------------------------

    def engine(self, service: str) -> Engine:
        if service not in self._engines:
            tables: list[Table] = [table_of(OutboxMessage), table_of(WorkerRow), *REGISTRY[service].tables]
            self._engines[service] = create_service_engine(
                database_url_for(self.settings, service),
                service,
                tables,
                self.settings.database_schema_prefix,
            )
        return self._engines[service]

    def count(self, service: str, statement: object) -> int:
        with Session(self.engine(service)) as session:
            return int(session.exec(statement).one())  # type: ignore[call-overload]

    def unsettled(self, job_ids: set[str]) -> str | None:
        """What is still moving, or None once every job ended and every effect has been passed on."""
        with Session(self.engine("placement")) as session:
            states = dict(session.exec(select(JobRow.job_id, JobRow.state)).all())
        open_jobs = [j for j in job_ids if states.get(j) not in TERMINAL_STATES]
        if open_jobs:
            return f"{len(open_jobs)} jobs not ended, e.g. {open_jobs[0]} ({states.get(open_jobs[0])})"
        running = self.count("factory-agent", select(func.count()).where(RunRow.state == RunState.RUNNING))
        with Session(self.engine("billing")) as session:
            unbilled = session.exec(select(ChargeRow).where(col(ChargeRow.billed).is_(False))).all()
        if running or unbilled:
            example = (
                unbilled[0].model_dump(include={"job_id", "attempt", "expected_reports", "rated_seq"})
                if unbilled
                else {}
            )
            return f"{running} runs running, {len(unbilled)} not billed {example}"
        backlog = {s: self.count(s, select(func.count()).select_from(OutboxMessage)) for s in SERVICES}
        if any(backlog.values()):
            return f"outbox backlog {backlog}"
        return None

    async def settle(self, job_ids: set[str], within: float = 120.0) -> None:
        """Until every job ended, every run was billed, every outbox is empty and every consumer group has
        committed everything on its topics: then nothing is in flight and the databases are final."""
        deadline = asyncio.get_running_loop().time() + within
        while (state := self.unsettled(job_ids)) is not None or (state := await self._lagging()) is not None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not settled within {within:.0f} s: {state}")
            dead = [w.name for w in self.workers if not w.alive()]
            assert self.supervised or not dead, f"workers died while settling: {dead}"
            await asyncio.sleep(0.5)

    async def _lagging(self) -> str | None:
        """What `sovereign status` reports as lag, if anything."""
        lag = {
            f"{status.service}:{topic}": n
            for status in await collect_status(self.settings)
            for topic, n in status.lag.items()
            if n
        }
        return f"consumer lag {lag}" if lag else None

    async def history(self) -> History:
        return await collect_history(self.settings)

    async def check(self, expected_dead_letters: int = 0) -> list[Violation]:
        return check(await self.history(), expected_dead_letters)


@contextlib.asynccontextmanager
async def running_cluster(
    root: Path,
    workers: Mapping[str, int] | None = None,
    database: tuple[str, str] | None = None,
    service_database_url: str | None = None,
    catalogue_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    crash_at: Mapping[str, str] | None = None,
    kafka: LocalKafka | None = None,
) -> AsyncIterator[Cluster]:
    """A fresh Tansu broker, or the given Apache Kafka (started and initialised), and every service as
    processes (`workers` says how many of each; 1 by default).

    database: (url, schema prefix) for PostgreSQL, else SQLite files; service_database_url lets the services
    reach that database another way (through a fault-injecting proxy) while the harness reads it directly.
    crash_at arms crash points in a service's first process (SOVEREIGN_CRASH_AT).
    """
    (root / "logs").mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=root / "logs" / "tansu.log") if kafka is None else None
    settings = Settings(
        data_dir=root / "data",
        idempotent_producer=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        catalogue_dir=catalogue_dir or REPO_ROOT / "catalogue",
        keyring_path=TEST_KEYS.keyring,
    )
    if broker is not None:
        broker.start()
        settings = replace(settings, bootstrap_servers=broker.bootstrap_servers)
    else:
        assert kafka is not None
        settings = kafka.settings_for(ADMIN, settings)  # the harness reads everything, as the admin
    if database is not None:
        settings = replace(settings, database_url=database[0], database_schema_prefix=database[1])
    variables = {
        "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "KAFKA_FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS),
        "SOVEREIGN_CATALOGUE_DIR": str(settings.catalogue_dir),
        "SOVEREIGN_TIME_SCALE": str(TIME_SCALE),
        "SOVEREIGN_QUEUE_RETRY_SECONDS": "2",
        "LOG_LEVEL": "INFO",
        **TEST_KEYS.service_env(),
        **({"DATABASE_URL": service_database_url or database[0]} if database else {}),
        **({"SOVEREIGN_DB_SCHEMA_PREFIX": database[1]} if database else {}),
        **(env or {}),
    }
    service_env = embedded_service_env(settings.bootstrap_servers, settings.data_dir, **variables)
    cluster = Cluster(root, settings, service_env, kafka)
    try:
        if broker is not None:
            topics = all_topics(load_catalogue(settings.catalogue_dir).tenants)
            await ensure_topics(broker.bootstrap_servers, topics, settings.topic_partitions)
        counts = {service: 1 for service in SERVICES} | dict(workers or {})
        armed = crash_at or {}
        started = [cluster.start(s, i, armed.get(s, "")) for s, n in counts.items() for i in range(n)]
        # An armed worker may crash before it is ready: the test's supervisor takes care of it.
        await cluster.wait_ready([w for w in started if not w.crash_at])
        yield cluster
    finally:
        await cluster.stop_all()
        if broker is not None:
            broker.stop()


# --- the seeded workload ---------------------------------------------------------------------------------


@dataclass
class Workload:
    requests: list[JobRequest]
    cancels: list[JobRequest]
    capacity_changes: list[CapacityUpdatedEvent]

    @property
    def job_ids(self) -> set[str]:
        return {str(r.job_id) for r in self.requests}


def seeded_workload(
    seed: int, jobs: int, catalogue_dir: Path, cancels: int = 3, capacity_changes: int = 2
) -> Workload:
    rng = random.Random(seed)
    requests = generate(jobs, seed)
    # Short deadlines for some jobs, so expiry in the queue is part of the mix.
    now = datetime.now(UTC)
    requests = [
        r.model_copy(update={"deadline": now + timedelta(seconds=rng.randint(20, 40))})
        if rng.random() < 0.1
        else r
        for r in requests
    ]
    pools = [
        (offer.site.site_id, pool) for offer in load_catalogue(catalogue_dir).offers for pool in offer.pools
    ]
    changes = []
    for site_id, pool in rng.sample(pools, min(capacity_changes, len(pools))):
        status = rng.choice(["maintenance", "available"])
        size = pool.gpu_count + rng.choice([0, 8, 64])
        changes.append(
            TEST_KEYS.factory.sign(
                CapacityUpdatedEvent.create(
                    source=f"factory/{site_id}",
                    subject=site_id,
                    data=CapacityUpdated(
                        site_id=site_id, pool_id=pool.pool_id, status=status, gpu_count=size
                    ),
                )
            )
        )
    return Workload(requests, rng.sample(requests, min(cancels, len(requests))), changes)


def restore_capacity(change: CapacityUpdatedEvent, catalogue_dir: Path) -> CapacityUpdatedEvent:
    pool = next(
        p
        for offer in load_catalogue(catalogue_dir).offers
        for p in offer.pools
        if p.pool_id == change.data.pool_id
    )
    data = change.data.model_copy(update={"status": "available", "gpu_count": pool.gpu_count})
    return TEST_KEYS.factory.sign(
        CapacityUpdatedEvent.create(source=change.source, subject=change.subject, data=data)
    )


async def drive(cluster: Cluster, workload: Workload, seed: int, catalogue_dir: Path) -> None:
    """Once placement knows the whole market, send the workload in seeded bursts: requests, then cancels
    and capacity changes among them. (Placement decides with the sites offered so far, so a request sent
    before the offers would be judged against part of the market.)"""
    rng = random.Random(seed)
    sites = len(load_catalogue(catalogue_dir).offers)
    deadline = asyncio.get_running_loop().time() + 90
    while cluster.count("placement", select(func.count()).select_from(SiteRow)) < sites:
        assert asyncio.get_running_loop().time() < deadline, "the factory's offers never reached placement"
        await asyncio.sleep(0.3)
    events: list[tuple[AnyEvent, str]] = list(request_events(workload.requests, TEST_KEYS.tenants))
    extra: list[tuple[AnyEvent, str]] = [
        (cancel_event(r.tenant_id, r.job_id, "fault suite", TEST_KEYS.tenants[r.tenant_id]), str(r.job_id))
        for r in workload.cancels
    ]
    extra += [(change, change.data.site_id) for change in workload.capacity_changes]
    for item in extra:
        events.insert(rng.randint(len(events) // 3, len(events)), item)
    while events:
        burst = events[: rng.randint(1, 8)]
        events = events[len(burst) :]
        for principal, sent in itertools.groupby(burst, key=lambda item: sender(item[0])):
            await cluster.produce_as(principal, list(sent))
        await asyncio.sleep(rng.uniform(0.0, 0.3))
    restores = [(restore_capacity(c, catalogue_dir), c.data.site_id) for c in workload.capacity_changes]
    await cluster.produce_as(FACTORY_PRINCIPAL, restores)


def sender(event: AnyEvent) -> str:
    """The Kafka principal that sends an event: a tenant's own, or the factory agent's for capacity."""
    if event.source.startswith("tenant/"):
        return f"tenant-{event.source.removeprefix('tenant/')}"
    return FACTORY_PRINCIPAL
