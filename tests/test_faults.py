"""The fault suite: real processes, a seeded workload, injected faults, then every invariant checked.

Each test prints its seed; `FAULT_SEED=<seed> pytest tests/test_faults.py -k <test>` runs it again, and
`pytest tests/test_faults.py --seeds 20` runs twenty random seeds per fault.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import Engine, Table, make_url
from sqlmodel import Session, col, select

from contracts import AnyEvent
from contracts.events import (
    CapacityUpdated,
    CapacityUpdatedEvent,
    JobCancelEvent,
    JobCancelRequested,
    JobRequest,
    JobRequestedEvent,
    UsageReportedEvent,
)
from services.placement.logic import JobState
from services.placement.storage import JobRow, PoolRow
from services.registry import SERVICES as REGISTRY
from services.shared.crash_points import HANDLER_COMMITTED, OUTBOX_PUBLISHED
from services.shared.db import create_service_engine, database_url_for
from services.shared.embedded_broker import free_loopback_port
from services.shared.settings import REPO_ROOT
from sovereign.replay import REPLAYABLE, replay
from sovereign.status import collect_status, render_status
from sovereign.submit import cancel_event
from sovereign.verification.invariants import History, check
from sovereign.verification.watch import produce
from sovereign.verification.workload import request_events
from tests.conftest import TEST_KEYS, drop_schemas
from tests.db_proxy import DatabaseProxy
from tests.fault_harness import (
    SERVICES,
    SESSION_TIMEOUT_MS,
    Cluster,
    Worker,
    drive,
    running_cluster,
    seeded_workload,
)

CATALOGUE = REPO_ROOT / "catalogue"


def announce(seed: int) -> None:
    print(f"\nFAULT_SEED={seed}")


async def test_kill_9_at_crash_points_and_at_random_moments(tmp_path: Path, fault_seed: int) -> None:
    """Each service is killed after a handler's commit but before its offset commit (the outbox not yet
    published), then after the relay published but before it deleted the batch, and at random moments;
    a supervisor restarts it each time."""
    announce(fault_seed)
    rng = random.Random(fault_seed)
    # Each service crashes once at a crash point (which one is seeded), and two more kills land anywhere.
    # Governance publishes nothing in this workload, so its relay never reaches OUTBOX_PUBLISHED.
    points = {
        s: [HANDLER_COMMITTED] if s == "governance" else [HANDLER_COMMITTED, OUTBOX_PUBLISHED]
        for s in SERVICES
    }
    first = {s: f"{rng.choice(points[s])}={rng.randint(1, 3)}" for s in SERVICES}
    workload = seeded_workload(fault_seed, jobs=20, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path, crash_at=first) as cluster:
        restarted: list[Worker] = []
        supervisor = asyncio.create_task(cluster.supervise({}, restarted))

        async def random_kills() -> None:
            for _ in range(2):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                victim = rng.choice([w for w in cluster.workers if w.alive()])
                cluster.signal(victim, signal.SIGKILL)

        await asyncio.gather(drive(cluster, workload, fault_seed, CATALOGUE), random_kills())
        await cluster.settle(workload.job_ids)
        supervisor.cancel()
        violations = await cluster.check()
        crashed = cluster.logs_with("crash_point_reached")
        print(f"armed {first}; crashed at a point: {crashed}; restarted {[w.name for w in restarted]}")
        # The two random kills may each pre-empt one armed worker; every other crash point must fire.
        assert len(crashed) >= len(SERVICES) - 2, crashed
        assert not violations, "\n".join(map(str, violations))


async def duplicate_and_reorder(bootstrap: str, rng: random.Random, stop: asyncio.Event) -> int:
    """Deliver every event a second time: each batch read is sent again shuffled, so the copies arrive late
    and out of order among the originals. Returns how many copies were sent."""
    consumer = AIOKafkaConsumer(*DUPLICATED_TOPICS, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    copies = 0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            records = [
                r for batch in batches.values() for r in batch if ("fault-copy", b"1") not in r.headers
            ]
            rng.shuffle(records)
            for record in records:
                headers = [*record.headers, ("fault-copy", b"1")]
                await producer.send(record.topic, record.value, key=record.key, headers=headers)
            copies += len(records)
    finally:
        await producer.stop()
        await consumer.stop()
    return copies


DUPLICATED_TOPICS = (
    "capacity.offered",
    "jobs.requested",
    "jobs.cancel",
    "jobs.placed",
    "jobs.cancelled",
    "jobs.started",
    "usage.reported",
    "jobs.completed",
    "jobs.billed",
    "policy.decisions",
)


async def test_every_event_delivered_twice_and_out_of_order(tmp_path: Path, fault_seed: int) -> None:
    announce(fault_seed)
    workload = seeded_workload(fault_seed, jobs=20, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path) as cluster:
        stop = asyncio.Event()
        tap = asyncio.create_task(
            duplicate_and_reorder(cluster.settings.bootstrap_servers, random.Random(fault_seed), stop)
        )
        await drive(cluster, workload, fault_seed, CATALOGUE)
        await cluster.settle(workload.job_ids)
        stop.set()
        copies = await tap
        await cluster.settle(workload.job_ids)  # the last copies change nothing either
        history = await cluster.history()
        print(f"{copies} copies delivered")
        assert copies > len(workload.requests)
        repeated = sum(len(events) - len(history.distinct(topic)) for topic, events in history.events.items())
        assert repeated >= copies
        violations = check(history)
        assert not violations, "\n".join(map(str, violations))


async def test_poison_messages_land_in_their_dead_letter_topics_and_partitions_flow(
    tmp_path: Path, fault_seed: int
) -> None:
    announce(fault_seed)
    workload = seeded_workload(fault_seed, jobs=12, catalogue_dir=CATALOGUE, cancels=0, capacity_changes=0)
    async with running_cluster(tmp_path) as cluster:
        groups = Counter(topic for status in await collect_status(cluster.settings) for topic in status.lag)
        bootstrap = cluster.settings.bootstrap_servers
        # Keyed like the workload's jobs, so the poison sits in the partitions the real events then use.
        keys = [str(r.job_id).encode() for r in workload.requests]
        oversized = JobRequestedEvent.create(source="tenant/mois", subject="mois", data=workload.requests[0])
        oversized_bytes = oversized.model_dump_json().replace('"name":"', '"name":"' + "x" * 300_000).encode()
        poison: list[tuple[str, str, bytes]] = []  # (kind, topic, payload)
        for topic in sorted(groups):
            poison += [
                ("not JSON", topic, b"\xff\xfe{not json"),
                ("wrong schema", topic, b'{"hello": "world"}'),
            ]
        poison += [
            ("oversized", "jobs.requested", oversized_bytes),
            ("oversized", "usage.reported", oversized_bytes),
        ]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2**20)
        await producer.start()
        try:
            for index, (_, topic, payload) in enumerate(poison):
                await producer.send_and_wait(topic, payload, key=keys[index % len(keys)])
            await drive(cluster, workload, fault_seed, CATALOGUE)
            await cluster.settle(workload.job_ids)
            # Valid in shape, impossible in fact: another tenant cancels a job; a factory reuses an event id.
            target = workload.requests[0]
            stranger = "hanbit-ai" if target.tenant_id != "hanbit-ai" else "mois"
            foreign_cancel = TEST_KEYS.tenants[stranger].sign(
                JobCancelEvent.create(
                    source=f"tenant/{stranger}",
                    subject=stranger,
                    data=JobCancelRequested(job_id=target.job_id, tenant_id=stranger),
                )
            )
            history = await cluster.history()
            usage = history.distinct("usage.reported")[0]
            # The factory's own key on other usage under an id it already used.
            reused = UsageReportedEvent.model_validate(
                {**usage, "data": {**usage["data"], "gpu_seconds": usage["data"]["gpu_seconds"] + 1}}
            )
            impossible = [
                ("impossible", "usage.reported", TEST_KEYS.factory.sign(reused).model_dump_json().encode()),
            ]
            for _, topic, payload in impossible:
                await producer.send_and_wait(topic, payload, key=keys[0])
            poison += impossible
            # The stranger proved who it is: it is told, on its own stream, as for a job nobody has.
            await producer.send_and_wait(
                "jobs.cancel", foreign_cancel.model_dump_json().encode(), key=keys[0]
            )
        finally:
            await producer.stop()
        # Each placement worker also reads policy.published in a group of its own. Governance leaves a
        # request that is not a valid event to placement, which answers or dead-letters it once.
        groups["policy.published"] += 1
        groups["jobs.requested"] = 1
        expected = sum(1 if kind == "impossible" else groups[topic] for kind, topic, _ in poison)
        deadline = asyncio.get_running_loop().time() + 30

        def answers(history: History) -> list[tuple[str, str]]:
            return [
                (e["data"]["tenant_id"], e["data"]["code"])
                for e in history.distinct("jobs.rejected")
                if e["data"].get("envelope_id") == str(foreign_cancel.id)
            ]

        while len((history := await cluster.history()).dead_letters) < expected or not answers(history):
            assert asyncio.get_running_loop().time() < deadline, f"{len(history.dead_letters)} of {expected}"
        assert answers(history) == [(stranger, "unknown_job")]
        for kind, topic, payload in poison:
            letters = [d for d in history.dead_letters if d.payload == payload and d.topic == f"{topic}.dlq"]
            assert letters, f"{kind} on {topic} is not in {topic}.dlq"
            assert all(d.headers["dlq-original-topic"] == topic and d.headers["dlq-error"] for d in letters)
            if kind != "not JSON" and kind != "wrong schema":
                assert {d.headers["dlq-error-type"] for d in letters} == {"PoisonMessage"}, (kind, topic)
        violations = check(history, expected_dead_letters=expected)
        print(f"{len(poison)} poison messages, {expected} dead letters")
        assert not violations, "\n".join(map(str, violations))


async def test_a_failing_policy_engine_places_nothing_and_jobs_wait(tmp_path: Path, fault_seed: int) -> None:
    """A stand-in OPA server that answers HTTP 500, which the real one cannot be made to do; the real server
    hanging and crashed is tests/test_production_opa.py."""
    announce(fault_seed)
    port, mode = free_loopback_port(), tmp_path / "opa-mode"
    mode.write_text("ok")

    engine = start_stand_in_opa(port, mode)
    workload = seeded_workload(fault_seed, jobs=10, catalogue_dir=CATALOGUE, cancels=0, capacity_changes=0)
    batches = [workload.requests[i::2] for i in range(2)]
    try:
        async with running_cluster(tmp_path, env={"OPA_URL": f"http://127.0.0.1:{port}"}) as cluster:
            bootstrap = cluster.settings.bootstrap_servers
            await produce(bootstrap, request_events(batches[0], TEST_KEYS.tenants), idempotent=False)
            await cluster.settle({str(r.job_id) for r in batches[0]})
            mode.write_text("fail")
            await produce(bootstrap, request_events(batches[1], TEST_KEYS.tenants), idempotent=False)
            faulted = {str(r.job_id) for r in batches[1]}
            await assert_held_for_the_policy_engine(cluster, faulted, "fail")
            mode.write_text("ok")
            await cluster.settle(workload.job_ids)
            history = await cluster.history()
            assert faulted <= decided(history)  # decided again once the engine was back
            violations = check(history)
            assert not violations, "\n".join(map(str, violations))
    finally:
        engine.kill()
        engine.wait()


async def assert_held_for_the_policy_engine(cluster: Cluster, job_ids: set[str], fault: str) -> None:
    """Placement holds every job (queued for the policy engine, or rejected before any policy ran) and has
    placed none."""
    await wait_for(partial(all_in_states, cluster, job_ids, HELD), f"{fault}: jobs held")
    with Session(cluster.engine("placement")) as session:
        held = session.exec(select(JobRow).where(col(JobRow.job_id).in_(job_ids))).all()
    reasons = [row.reason for row in held if row.state == "queued"]
    assert reasons and all("policy" in reason for reason in reasons), reasons
    placed_meanwhile = job_ids_on(await cluster.history(), "jobs.placed") & job_ids
    assert not placed_meanwhile, f"placed without the engine: {placed_meanwhile}"


def job_ids_on(history: History, topic: str) -> set[str]:
    return {str(event["data"]["job_id"]) for event in history.distinct(topic)}


def decided(history: History) -> set[str]:
    """The jobs placed or rejected."""
    return job_ids_on(history, "jobs.placed") | job_ids_on(history, "jobs.rejected")


def start_stand_in_opa(port: int, mode: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.opa_double", str(port), str(mode)], cwd=REPO_ROOT)


def all_in_states(cluster: Cluster, job_ids: set[str], states: frozenset[str]) -> bool:
    """Placement holds every one of the jobs, each in one of the states."""
    with Session(cluster.engine("placement")) as session:
        found = session.exec(select(JobRow.state).where(col(JobRow.job_id).in_(job_ids))).all()
    return len(found) == len(job_ids) and set(found) <= states


# Decided without a policy decision: waiting for the engine, or rejected before any policy ran.
HELD = frozenset({JobState.QUEUED, JobState.REJECTED})


async def wait_for(probe: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not probe():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.3)


async def test_a_consumer_paused_past_its_session_timeout_causes_no_duplicate_effect(
    tmp_path: Path, fault_seed: int
) -> None:
    announce(fault_seed)
    rng = random.Random(fault_seed)
    workload = seeded_workload(fault_seed, jobs=20, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path, workers={"placement": 2, "billing": 2}) as cluster:
        victim = cluster.worker(rng.choice(["placement", "billing"]), rng.randint(0, 1))

        async def pause() -> None:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            cluster.signal(victim, signal.SIGSTOP)
            await asyncio.sleep(SESSION_TIMEOUT_MS / 1000 + 3)
            cluster.signal(victim, signal.SIGCONT)

        await asyncio.gather(drive(cluster, workload, fault_seed, CATALOGUE), pause())
        await cluster.settle(workload.job_ids)
        print(f"paused {victim.name}")
        assert victim.alive()
        violations = await cluster.check()
        assert not violations, "\n".join(map(str, violations))


def one_pool_catalogue(directory: Path, gpus: int) -> Path:
    """The default tenants and one site, skt-pangyo, with its H100 pool cut to `gpus`."""
    sites = json.loads((CATALOGUE / "sites.json").read_text())["sites"]
    [pangyo] = [entry for entry in sites if entry["site"]["site_id"] == "skt-pangyo"]
    pangyo["pools"] = [
        {**pool, "gpu_count": gpus} for pool in pangyo["pools"] if pool["pool_id"] == RACE_POOL
    ]
    directory.mkdir(parents=True)
    (directory / "sites.json").write_text(json.dumps({"sites": [pangyo]}))
    (directory / "tenants.json").write_text((CATALOGUE / "tenants.json").read_text())
    return directory


RACE_POOL = "skt-pangyo-h100"


def long_job(index: int, seed: int) -> JobRequest:
    return JobRequest.model_validate(
        {
            "tenant_id": "hanbit-ai",
            "client_request_id": f"race-{seed}-{index}",
            "name": "race",
            "kind": "training",
            "accelerator_model": "H100",
            "gpu_count": 4,
            "expected_hours": 5000,  # runs for the whole test
            "deadline": "2030-01-01T00:00:00Z",
        }
    )


async def test_two_placement_workers_racing_for_the_last_gpus_never_oversubscribe(
    tmp_path: Path, fault_seed: int
) -> None:
    """Round after round the pool grows by 8 GPUs while 4 new 4-GPU jobs arrive on every partition and the
    queued ones are re-planned: both workers compete for the same new GPUs each time."""
    announce(fault_seed)
    rng = random.Random(fault_seed)
    catalogue = one_pool_catalogue(tmp_path / "catalogue", gpus=8)
    size, jobs = 8, list[JobRequest]()
    async with running_cluster(
        tmp_path, workers={"placement": 2}, catalogue_dir=catalogue, env={"SOVEREIGN_TIME_SCALE": "3600"}
    ) as cluster:
        bootstrap = cluster.settings.bootstrap_servers
        for round_number in range(6):
            new = [long_job(len(jobs) + i, fault_seed) for i in range(4)]
            jobs += new
            events: list[tuple[AnyEvent, str]] = list(request_events(new, TEST_KEYS.tenants))
            if round_number:
                size += 8
                grow = CapacityUpdated(
                    site_id="skt-pangyo", pool_id=RACE_POOL, status="available", gpu_count=size
                )
                update = TEST_KEYS.factory.sign(
                    CapacityUpdatedEvent.create(source="factory/skt-pangyo", subject="skt-pangyo", data=grow)
                )
                events.insert(rng.randint(0, len(events)), (update, "skt-pangyo"))
            await produce(bootstrap, events, idempotent=False)
            ids = {str(r.job_id) for r in jobs}
            await wait_for(
                partial(all_in_states, cluster, ids, HELD | {JobState.PLACED, JobState.RUNNING}),
                "all decided",
            )
            await asyncio.sleep(rng.uniform(0.5, 2.5))  # sweeps of both workers re-plan the queue meanwhile
            with Session(cluster.engine("placement")) as session:
                pool = session.get(PoolRow, RACE_POOL)
                holding = sum(
                    row.gpu_count
                    for row in session.exec(
                        select(JobRow).where(col(JobRow.state).in_([JobState.PLACED, JobState.RUNNING]))
                    )
                )
            assert pool is not None and pool.total_gpus == size
            assert pool.reserved_gpus == holding <= size, (round_number, pool.reserved_gpus, holding, size)
            placed = (await cluster.history()).distinct("jobs.placed")
            assert sum(event["data"]["gpu_count"] for event in placed) <= size, (round_number, len(placed))
        assert holding == size  # the queue kept every GPU busy: the races were real
        cancels = [
            (
                cancel_event(r.tenant_id, r.job_id, "fault suite", TEST_KEYS.tenants[r.tenant_id]),
                str(r.job_id),
            )
            for r in jobs
        ]
        await produce(bootstrap, cancels, idempotent=False)
        await cluster.settle({str(r.job_id) for r in jobs})
        violations = await cluster.check()
        assert not violations, "\n".join(map(str, violations))


async def test_database_connections_dropped_mid_transaction_and_refused(
    tmp_path: Path, fault_seed: int, postgres_url: str
) -> None:
    """PostgreSQL behind a proxy that cuts every connection now and then (mid-transaction or not) and
    sometimes refuses new ones: each effect commits with its outbox row or not at all."""
    announce(fault_seed)
    rng = random.Random(fault_seed)
    prefix = f"f{uuid.uuid4().hex[:10]}_"
    server = make_url(postgres_url)
    proxy = DatabaseProxy(server.host or "127.0.0.1", server.port or 5432)
    await proxy.start()
    workload = seeded_workload(fault_seed, jobs=20, catalogue_dir=CATALOGUE)
    try:
        proxied = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with running_cluster(
            tmp_path, database=(postgres_url, prefix), service_database_url=proxied
        ) as cluster:

            async def cut_connections() -> None:
                for cut in range(6):
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    proxy.drop_all()
                    if cut % 2:
                        proxy.refusing = True
                        await asyncio.sleep(rng.uniform(0.5, 1.5))
                        proxy.refusing = False

            await asyncio.gather(drive(cluster, workload, fault_seed, CATALOGUE), cut_connections())
            await cluster.settle(workload.job_ids)
            print(f"{proxy.dropped} connections cut")
            assert proxy.dropped > 0
            violations = await cluster.check()
            assert not violations, "\n".join(map(str, violations))
    finally:
        await proxy.stop()
        drop_schemas(postgres_url, prefix)


# Columns that say when or in which order a row was written, not what it holds.
ARRIVAL_COLUMNS = frozenset(
    {"id", "seq", "received_at", "posted_at", "crossed_at", "previous_hash", "entry_hash"}
)


def table_state(engine: Engine, tables: list[Table]) -> dict[str, list[str]]:
    state = {}
    with engine.connect() as connection:
        for table in tables:
            rows = connection.execute(table.select()).mappings()
            state[table.name] = sorted(
                repr(sorted((k, v) for k, v in row.items() if k not in ARRIVAL_COLUMNS)) for row in rows
            )
    return state


async def test_replaying_the_topics_into_fresh_databases_rebuilds_the_same_state(
    tmp_path: Path, fault_seed: int
) -> None:
    announce(fault_seed)
    workload = seeded_workload(fault_seed, jobs=16, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path) as cluster:
        await drive(cluster, workload, fault_seed, CATALOGUE)
        await cluster.settle(workload.job_ids)
        for service in REPLAYABLE:
            target = replace(cluster.settings, data_dir=tmp_path / "replayed")
            replayed = await replay(REGISTRY[service].build, cluster.settings, target)
            tables = [t for t in REGISTRY[service].tables if t.name != "chain_head"]  # a hash of the order
            fresh = create_service_engine(database_url_for(target, service), service, tables)
            live, rebuilt = table_state(cluster.engine(service), tables), table_state(fresh, tables)
            fresh.dispose()
            print(f"{service}: {replayed} events replayed, {sum(map(len, live.values()))} rows")
            assert replayed > 0 and any(live.values())
            assert rebuilt == live, service


async def test_sigterm_finishes_in_flight_work_or_leaves_it_for_redelivery(
    tmp_path: Path, fault_seed: int
) -> None:
    announce(fault_seed)
    rng = random.Random(fault_seed)
    workload = seeded_workload(fault_seed, jobs=20, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path) as cluster:

        async def stop_each_service() -> None:
            for service in rng.sample(SERVICES, len(SERVICES)):
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                worker = cluster.worker(service)
                cluster.signal(worker, signal.SIGTERM)
                code = await asyncio.to_thread(worker.process.wait, 30)
                assert code == 0, cluster.tail(worker)
                assert '"outbox_drained": true' in cluster.tail(worker, 3), cluster.tail(worker)
                cluster.start(service)

        await asyncio.gather(drive(cluster, workload, fault_seed, CATALOGUE), stop_each_service())
        await cluster.wait_ready(cluster.workers)
        await cluster.settle(workload.job_ids)
        violations = await cluster.check()
        assert not violations, "\n".join(map(str, violations))
        # `sovereign status`: one ready worker and one cleanly stopped per service, nothing lagging.
        report = await collect_status(cluster.settings)
        print(render_status(report))
        for status in report:
            assert sorted(w.state for w in status.workers) == ["ready", "stopped"], status
            assert status.ready and not any(status.lag.values()) and not status.outbox_backlog
            assert status.lag, status  # it knows which topics the service consumes
