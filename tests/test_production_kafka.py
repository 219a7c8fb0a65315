"""The production transport, for real: Apache Kafka 4.4 in KRaft mode started by deploy/kafka/start.sh with
SASL_SSL, SCRAM-SHA-512 and the standard authorizer, initialised by `sovereign kafka-init`; every service
as its own principal with the idempotent producer on; PostgreSQL as compose gives it."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from sqlalchemy import func
from sqlmodel import col, select

from services.placement.storage import JobRow
from services.shared.settings import REPO_ROOT, Settings
from sovereign.acls import Grant, all_grants
from sovereign.stack.kafka import LocalKafka, make_tls, probe_read, probe_write
from sovereign.status import collect_status
from tests.conftest import drop_schemas
from tests.fault_harness import Cluster, drive, running_cluster, seeded_workload

pytestmark = pytest.mark.production_stack

CATALOGUE = REPO_ROOT / "catalogue"


def initialised_kafka() -> Iterator[LocalKafka]:
    """A broker as compose starts it, with kafka-init run once; removed, data and all, afterwards."""
    broker = LocalKafka()
    try:
        broker.start()
        asyncio.run(broker.init())
        yield broker
    finally:
        broker.remove()


@pytest.fixture(scope="module")
def kafka() -> Iterator[LocalKafka]:
    """For the ACL probes: they write records no service should consume, so the lifecycle runs on a broker
    of its own."""
    yield from initialised_kafka()


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[tuple[str, str]]:
    prefix = f"k{random.randrange(16**10):010x}_"
    yield postgres_url, prefix
    drop_schemas(postgres_url, prefix)


def test_kafka_init_makes_every_principal_and_grants_every_acl(kafka: LocalKafka) -> None:
    report = asyncio.run(kafka.init())  # a second run changes nothing and fails on nothing
    assert report.missing_passwords == []
    assert set(report.users) == set(LocalKafka.principals())
    assert report.acls == len(all_grants(Settings()))


# --- the ACLs, enforced by the broker ------------------------------------------------------------------


def _probe_topic(grant: Grant) -> str:
    """A topic the grant covers: the topic itself, or one under a prefix."""
    return grant.resource.removesuffix("*") + "mois" if grant.resource.endswith("*") else grant.resource


def _by_principal(operation: str) -> dict[str, list[str]]:
    """Each principal's granted topics for the operation (a topic under each granted prefix)."""
    topics: dict[str, list[str]] = {}
    for grant in all_grants(Settings()):
        if grant.operation == operation and not grant.resource.startswith("group:"):
            topics.setdefault(grant.principal.removeprefix("User:"), []).append(_probe_topic(grant))
    return topics


async def test_every_write_a_principal_needs_is_allowed(kafka: LocalKafka) -> None:
    writes = _by_principal("Write")
    assert {"placement", "billing", "factory-agent", "governance", "officer", "tenant-mois"} <= set(writes)
    await asyncio.gather(*(probe_write(kafka, principal, topics) for principal, topics in writes.items()))


async def test_every_read_a_principal_needs_is_allowed_in_its_own_groups(kafka: LocalKafka) -> None:
    reads = _by_principal("Read")
    group_prefix = {
        g.principal.removeprefix("User:"): g.resource.removeprefix("group:")
        for g in all_grants(Settings())
        if g.operation == "Read" and g.resource.startswith("group:")
    }
    assert {"placement", "billing", "factory-agent", "governance", "auditor", "tenant-mois"} <= set(reads)
    await asyncio.gather(
        *(
            probe_read(
                kafka,
                principal,
                topics,
                f"{group_prefix[principal]}acl-probe" if principal in group_prefix else None,
            )
            for principal, topics in reads.items()
        )
    )


@pytest.mark.parametrize(
    ("principal", "topic", "group"),
    [
        ("tenant-mois", "tenant.nia", "tenant.mois.probe"),  # another tenant's stream
        ("tenant-mois", "jobs.placed", "tenant.mois.probe"),  # a shared topic: every tenant's events
        ("tenant-mois", "usage.reported", None),
        ("factory-agent", "tenant.mois", None),
    ],
)
async def test_the_broker_refuses_a_read_the_table_does_not_grant(
    kafka: LocalKafka, principal: str, topic: str, group: str | None
) -> None:
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await probe_read(kafka, principal, [topic], group)


async def test_a_tenant_may_not_read_in_another_tenants_consumer_group(kafka: LocalKafka) -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        await probe_read(kafka, "tenant-mois", ["tenant.mois"], "tenant.nia.probe")


@pytest.mark.parametrize(
    ("principal", "topic"),
    [
        ("tenant-mois", "capacity.offered"),  # a tenant posing as a factory
        ("tenant-mois", "tenant.nia"),  # writing into another tenant's stream
        ("tenant-mois", "tenant.mois"),  # or its own: only the marketplace writes there
        ("factory-agent", "jobs.placed"),  # a factory posing as placement
        ("factory-agent", "policy.published"),  # only the officer publishes policy
        ("billing", "jobs.requested"),
    ],
)
async def test_the_broker_refuses_a_write_the_table_does_not_grant(
    kafka: LocalKafka, principal: str, topic: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await probe_write(kafka, principal, [topic])


async def test_a_wrong_password_is_refused(
    kafka: LocalKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    settings = replace(kafka.settings_for("tenant-mois"), kafka_password_file=wrong)
    with pytest.raises(KafkaConnectionError):
        await probe_write(kafka, "tenant-mois", ["jobs.requested"], settings)
    assert "SaslAuthenticationFailed" in caplog.text  # refused for its password, not unreachable


async def test_a_client_without_tls_gets_nothing(kafka: LocalKafka) -> None:
    settings = replace(kafka.settings_for("tenant-mois"), kafka_security_protocol="PLAINTEXT")
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(probe_write(kafka, "tenant-mois", ["jobs.requested"], settings), 30)


async def test_a_client_that_does_not_trust_the_broker_certificate_gets_nothing(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """TLS verifies the broker: a CA other than the broker's own refuses the handshake."""
    make_tls(tmp_path / "other", ["127.0.0.1"])
    settings = replace(kafka.settings_for("tenant-mois"), kafka_ca_file=tmp_path / "other" / "ca.pem")
    with pytest.raises((KafkaConnectionError, ssl.SSLError)):
        await asyncio.wait_for(probe_write(kafka, "tenant-mois", ["jobs.requested"], settings), 30)


# --- the lifecycle, through a broker crash ---------------------------------------------------------------


@pytest.fixture
def crashing_kafka() -> Iterator[LocalKafka]:
    yield from initialised_kafka()


async def test_the_whole_lifecycle_through_a_kill_9_of_the_broker_keeps_every_invariant(
    crashing_kafka: LocalKafka, postgres: tuple[str, str], tmp_path: Path
) -> None:
    """A realistic workload (requests and cancels sent as each tenant, capacity changes as the factory,
    every service as its own principal) flows; once some jobs are placed the broker is killed (SIGKILL)
    and restarted on its data directory a few seconds later; the services ride it out. Once settled:
    nothing lost, nothing done twice, the six invariants hold, and `sovereign status` (end offsets from
    ListOffsets) reports no lag."""
    workload = seeded_workload(11, jobs=24, catalogue_dir=CATALOGUE)
    async with running_cluster(tmp_path, database=postgres, kafka=crashing_kafka) as cluster:

        async def crash_and_restart() -> None:
            await _wait_for_placements(cluster, at_least=3)
            crashing_kafka.kill()
            await asyncio.sleep(3)
            await asyncio.to_thread(crashing_kafka.start)

        await asyncio.gather(drive(cluster, workload, 11, CATALOGUE), crash_and_restart())
        await cluster.settle(workload.job_ids, within=240)
        violations = await cluster.check()
        assert not violations, "\n".join(map(str, violations))
        history = await cluster.history()
        assert len(history.events.get("jobs.placed", [])) >= 5, "too few placements to prove anything"
        assert history.events.get("jobs.billed"), "nothing was billed"
        statuses = await collect_status(cluster.settings)
        assert {status.service for status in statuses} == {
            "placement",
            "factory-agent",
            "billing",
            "governance",
        }
        assert all(status.lag for status in statuses), "status found a service with no consumer to report on"
        assert all(not any(status.lag.values()) for status in statuses)


async def _wait_for_placements(cluster: Cluster, at_least: int) -> None:
    """Until placement has placed some jobs (the crash lands mid-flow, not before it). Counted by the site a
    job was given: a job's state moves on from "placed" within seconds, and a poll could miss every one."""
    deadline = asyncio.get_running_loop().time() + 120
    placed = select(func.count()).where(col(JobRow.site_id).is_not(None))
    while cluster.count("placement", placed) < at_least:
        assert asyncio.get_running_loop().time() < deadline, "nothing was placed before the crash"
        await asyncio.sleep(0.2)
