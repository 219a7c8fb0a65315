"""The whole lifecycle over a real Kafka-protocol broker (Tansu): request -> placement -> usage -> bill.

Placement, the factory agent and billing run as separate services that share nothing but the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from contracts.events import (
    CapacityOfferedEvent,
    CapacityRejectedEvent,
    JobKind,
    JobRequest,
    JobRequestedEvent,
    UsageReportedEvent,
)
from services.factory_agent.simulation import usage_event_id
from services.governance.queries import DecisionQuery, find_decisions, verify_log
from services.registry import SERVICES
from services.shared.domain.attestation import sign_site
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import charge_krw
from services.shared.kafka import consumer_group
from services.shared.runtime import Service
from services.shared.settings import REPO_ROOT, Settings
from sovereign.submit import cancel, submit
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import EventWatcher, produce
from sovereign.verification.workload import generate, request_events
from tests.conftest import (
    TEST_KEYS,
    TYPESCRIPT_CLIENT,
    run_services,
    service_settings,
    settled,
    signing_as,
    typescript_client,
    wait_until_async,
)

pytestmark = pytest.mark.broker

# 100 simulated hours per real second: a long training run finishes in under a second.
TIME_SCALE = 360_000.0

Marketplace = tuple[Settings, Tracker, Service]


@pytest.fixture(scope="module")
async def marketplace(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Marketplace]:
    settings = service_settings(kafka, tmp_path_factory.mktemp("data"), time_scale=TIME_SCALE)
    builders = [
        partial(entry.build, settings) for entry in SERVICES.values()
    ]  # each as `sovereign run` builds it
    async with run_services(builders) as services, following(kafka, Tracker()) as tracker:
        yield settings, tracker, services[-1]


def job(tenant: str = "hanbit-ai", client_id: str | None = None, **fields: object) -> JobRequest:
    base = generate(1, seed=1)[0].model_dump(mode="json")
    return JobRequest.model_validate(
        {
            **base,
            "tenant_id": tenant,
            "client_request_id": client_id or uuid.uuid4().hex,
            "kind": JobKind.INFERENCE,
            "gpu_count": 4,
            "expected_hours": 3,
            "accelerator_model": None,
            "csap_grade": "none",
            "datasets": [],
            **fields,
        }
    )


async def test_every_job_ends_once_and_bills_equal_usage_times_locked_price(
    marketplace: Marketplace,
) -> None:
    settings, tracker, _ = marketplace
    requests = generate(24, seed=11)
    job_ids = {r.job_id for r in requests}
    await produce(settings.bootstrap_servers, request_events(requests, TEST_KEYS.tenants), idempotent=False)
    assert await wait_until(lambda: tracker.all_terminal(job_ids), within=90), tracker.states(job_ids)

    tenants = {r.tenant_id for r in requests}
    assert len(tenants) >= 5
    outcomes = {r.client_request_id: tracker.trace(r.job_id).terminal for r in requests}
    assert "rejected" in outcomes.values() and "billed" in outcomes.values()
    for request in requests:
        trace = tracker.trace(request.job_id)
        assert len(trace.placed) + len(trace.rejected) == 1, f"{request.name}: placed and rejected, or twice"
        if trace.rejected:
            assert not trace.started and not trace.billed
            continue
        [placed] = trace.placed
        [billed] = trace.billed
        [completed] = trace.completed
        # No placement without a recorded decision that allowed that very site under a known revision.
        decision = tracker.decisions[placed.explanation.decision_id]
        assert decision.policy_revision == placed.explanation.policy_revision
        assert next(v for v in decision.sites if v.site_id == placed.site_id).allowed
        # Bills equal usage times the price locked at placement, and the usage stream adds up to the bill.
        gpu_seconds = sum(u.gpu_seconds for u in trace.usage)
        assert len(trace.usage) == completed.usage_reports == billed.usage_reports
        assert billed.price_krw_per_gpu_hour == placed.price_krw_per_gpu_hour
        assert billed.amount_krw == charge_krw(gpu_seconds, placed.price_krw_per_gpu_hour)
        assert sum(r.amount_krw for r in trace.rated) == billed.amount_krw
        assert billed.marketplace_fee_krw + billed.site_payable_krw == billed.amount_krw
    assert tracker.subjects_mismatched == []

    by_reason = {r.client_request_id: tracker.trace(r.job_id).rejected for r in requests}
    codes = {rejections[0].code.value for rejections in by_reason.values() if rejections}
    assert {"unknown_tenant", "never_fits"} <= codes


async def test_duplicate_submission_is_placed_once(marketplace: Marketplace) -> None:
    settings, tracker, _ = marketplace
    request = job(client_id="duplicate-check")
    first = TEST_KEYS.tenants["hanbit-ai"].sign(
        JobRequestedEvent.create(source="tenant/hanbit-ai", subject="hanbit-ai", data=request)
    )
    resubmitted = TEST_KEYS.tenants["hanbit-ai"].sign(
        JobRequestedEvent.create(source="tenant/hanbit-ai", subject="hanbit-ai", data=request)
    )
    # The same envelope twice (a producer retry) and the same request in a new envelope (a user retry).
    await produce(
        settings.bootstrap_servers,
        [(first, str(request.job_id)), (first, str(request.job_id)), (resubmitted, str(request.job_id))],
        idempotent=False,
    )
    assert await wait_until(lambda: tracker.trace(request.job_id).terminal == "billed", within=60)
    await settled(settings, tracker)  # any wrongly duplicated outcome has surfaced by then
    trace = tracker.trace(request.job_id)
    assert len(trace.requests) == 2  # the repeated envelope is one event, recognised by its id
    assert tracker.duplicates >= 1
    assert len(trace.placed) == 1 and not trace.rejected and len(trace.billed) == 1


async def committed_offset(bootstrap: str, group: str, partition: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(partition) or 0
    finally:
        await consumer.stop()


async def test_redelivered_usage_is_billed_once(marketplace: Marketplace) -> None:
    settings, tracker, _ = marketplace
    request = job(client_id="redelivery-check")
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    assert await wait_until(lambda: tracker.trace(request.job_id).terminal == "billed", within=60)
    trace = tracker.trace(request.job_id)
    usage = trace.usage[0]
    source = f"factory/{usage.site_id}"
    # Redelivered: the factory's event again under its own id, and the same interval under a new id.
    same_id = TEST_KEYS.factory.sign(
        UsageReportedEvent.create(
            source=source,
            subject=usage.tenant_id,
            data=usage,
            event_id=usage_event_id(request.job_id, 1, usage.seq),
        )
    )
    new_id = TEST_KEYS.factory.sign(
        UsageReportedEvent.create(source=source, subject=usage.tenant_id, data=usage)
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(
                "usage.reported", e.model_dump_json().encode(), key=str(request.job_id).encode()
            )
            for e in (same_id, new_id)
        ]
    finally:
        await producer.stop()
    partition = TopicPartition("usage.reported", sent[-1].partition)
    assert await wait_until_async(
        lambda: committed_offset(settings.bootstrap_servers, consumer_group("billing"), partition),
        lambda offset: offset > sent[-1].offset,
        within=30,
    )
    await settled(settings, tracker)
    trace = tracker.trace(request.job_id)
    assert len(trace.billed) == 1
    assert len(trace.rated) == len({r.seq for r in trace.rated}) == trace.billed[0].usage_reports


async def test_malformed_messages_go_to_the_dlq_and_the_consumer_goes_on(
    marketplace: Marketplace,
) -> None:
    settings, tracker, _ = marketplace
    dlq = AIOKafkaConsumer(
        "jobs.requested.dlq",
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await dlq.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    poison = [
        b"not json at all",
        b'{"id": "x", "type": "jobs.requested", "data": {}}',
        TEST_KEYS.tenants["hanbit-ai"]
        .sign(JobRequestedEvent.create(source="tenant/hanbit-ai", subject="hanbit-ai", data=job()))
        .model_dump_json()
        .replace('"gpu_count":4', '"gpu_count":-4')
        .encode(),
    ]
    try:
        for payload in poison:
            await producer.send_and_wait("jobs.requested", payload, key=b"poison")
        good = job(client_id="after-poison")
        await producer.send_and_wait(
            "jobs.requested",
            TEST_KEYS.tenants["hanbit-ai"]
            .sign(JobRequestedEvent.create(source="tenant/hanbit-ai", subject="hanbit-ai", data=good))
            .model_dump_json()
            .encode(),
            key=b"poison",
        )
        assert await wait_until(lambda: bool(tracker.trace(good.job_id).placed), within=30)
        dead: list[tuple[bytes, dict[str, bytes]]] = []
        while len(dead) < len(poison):
            batch = await asyncio.wait_for(dlq.getmany(timeout_ms=1000), timeout=30)
            dead += [(r.value, dict(r.headers)) for records in batch.values() for r in records]
    finally:
        await producer.stop()
        await dlq.stop()
    # Kept in order per lane (the claimed tenant), not across lanes: the headers say where each one was.
    assert sorted(value for value, _ in dead) == sorted(poison)
    positions = sorted((int(headers["dlq-original-offset"]), value) for value, headers in dead)
    assert [value for _, value in positions] == poison
    for _, headers in dead:
        assert headers["dlq-original-topic"] == b"jobs.requested"
        assert headers["dlq-consumer"] == b"placement"
        assert headers["dlq-error"]
    reasons = {value: headers for value, headers in dead}
    not_json = reasons[poison[0]]
    assert b"ValidationError" in not_json["dlq-error-type"] or b"JSON" in not_json["dlq-error"]
    assert b"gpu_count" in reasons[poison[2]]["dlq-error"]


async def test_submit_command_follows_a_job_to_its_bill(
    marketplace: Marketplace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _, _ = marketplace
    job_file = tmp_path / "job.json"
    job_file.write_text(job(client_id="submitted-by-cli").model_dump_json())
    assert await submit(job_file, signing_as(settings, TEST_KEYS.tenants["hanbit-ai"]), wait_seconds=60) == 0
    printed = capsys.readouterr().out
    assert "placed on " in printed and "#1 " in printed and "billed " in printed


async def test_submit_command_refuses_an_invalid_file_clearly(
    marketplace: Marketplace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _, _ = marketplace
    job_file = tmp_path / "job.json"
    job_file.write_text('{"tenant_id": "mois", "gpu_count": 0}')
    assert await submit(job_file, settings, wait_seconds=5) == 2
    error = capsys.readouterr().err
    assert "is not a valid job request" in error and "gpu_count" in error and "client_request_id" in error


async def test_governance_logs_every_decision_in_an_intact_chain(marketplace: Marketplace) -> None:
    settings, tracker, governance = marketplace
    request = job(client_id="governance-check", csap_grade="low")
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    assert await wait_until(lambda: bool(tracker.trace(request.job_id).placed), within=60)
    decision_id = str(tracker.trace(request.job_id).placed[0].explanation.decision_id)

    def logged() -> bool:
        with Session(governance.engine) as session:
            return [
                e.decision_id for e in find_decisions(session, DecisionQuery(job_id=str(request.job_id)))
            ] == [decision_id]

    assert await wait_until(logged, within=30)
    assert await wait_until(lambda: _log_size(governance) == len(tracker.decisions), within=30)
    with Session(governance.engine) as session:
        verification = verify_log(session)
        assert verification.intact and verification.entries == len(tracker.decisions)
        by_rule = find_decisions(session, DecisionQuery(rule="EXP-01", tenant_id="hanbit-ai"))
        assert by_rule and all(e.tenant_id == "hanbit-ai" for e in by_rule)


def _log_size(governance: Service) -> int:
    with Session(governance.engine) as session:
        return verify_log(session).entries


async def test_cancelling_a_running_job_bills_its_usage_so_far_and_frees_capacity(
    marketplace: Marketplace,
) -> None:
    settings, tracker, _ = marketplace
    # 600 simulated hours (six hourly-or-longer intervals) take about six real seconds here.
    request = job(client_id="cancel-check", expected_hours=600)
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    trace = tracker.trace(request.job_id)
    assert await wait_until(lambda: bool(trace.started), within=60)
    assert (
        await cancel(
            signing_as(settings, TEST_KEYS.tenants[request.tenant_id]),
            request.tenant_id,
            request.job_id,
            "test",
        )
        == 0
    )
    assert await wait_until(lambda: trace.terminal == "billed", within=60), trace.state
    [cancelled] = trace.cancelled
    [completed] = trace.completed
    [billed] = trace.billed
    assert cancelled.stage == "placed" and completed.status == "cancelled"
    assert completed.usage_reports < 6 and billed.usage_reports == completed.usage_reports == len(trace.usage)
    assert billed.amount_krw == charge_krw(
        sum(u.gpu_seconds for u in trace.usage), billed.price_krw_per_gpu_hour
    )
    assert trace.state == "cancelled"


async def test_a_cancel_that_overtakes_its_request_stops_it(marketplace: Marketplace) -> None:
    settings, tracker, _ = marketplace
    request = job(client_id="cancel-early")
    trace = tracker.trace(request.job_id)
    await cancel(
        signing_as(settings, TEST_KEYS.tenants[request.tenant_id]),
        request.tenant_id,
        request.job_id,
        "changed our mind",
    )
    # Nothing to cancel yet: the tenant is told, and the cancel is kept for the request it overtook.
    assert await wait_until(lambda: bool(trace.refused), within=30)
    assert [r.code for r in trace.refused] == ["unknown_job"] and not trace.cancelled
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    assert await wait_until(lambda: bool(trace.cancelled), within=30)
    assert trace.terminal == "cancelled"
    assert (
        [c.stage for c in trace.cancelled] == ["before_request"] and not trace.placed and not trace.rejected
    )


async def test_an_offer_signed_by_an_unlisted_auditor_is_refused_with_an_event(
    marketplace: Marketplace,
) -> None:
    settings, _, _ = marketplace
    offer = load_catalogue(REPO_ROOT / "catalogue").offers[0]
    impostor = Ed25519PrivateKey.generate()
    signed = offer.model_copy(update={"attestation": sign_site(impostor, "self-declared", offer.site)})
    event = TEST_KEYS.factory.sign(
        CapacityOfferedEvent.create(source="factory/impostor", subject=offer.site.site_id, data=signed)
    )
    async with EventWatcher(settings.bootstrap_servers, ["capacity.rejected"]) as watcher:
        await produce(settings.bootstrap_servers, [(event, offer.site.site_id)], idempotent=False)
        async for batch in watcher.events():
            refusals = [e for e in batch if isinstance(e, CapacityRejectedEvent)]
            if refusals:
                break
    assert refusals[0].data.site_id == offer.site.site_id
    assert "not a listed auditor" in refusals[0].data.reason


async def test_a_typescript_tenant_client_written_from_the_guide_submits_follows_its_bill_and_cancels(
    marketplace: Marketplace,
) -> None:
    """examples/typescript-client (kafkajs, node:crypto) against the running marketplace: its signatures
    verify, its stream shows the placement, bill, refusals and cancel, and nothing of other tenants."""
    settings, tracker, _ = marketplace
    signer = TEST_KEYS.tenants["mois"]
    client = await asyncio.create_subprocess_exec(
        *typescript_client("tour"),
        cwd=TYPESCRIPT_CLIENT,
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TENANT_ID": "mois",
            "TENANT_KEY_ID": signer.key_id,
            "TENANT_KEY_FILE": str(TEST_KEYS.private_key(signer)),
            "KAFKAJS_NO_PARTITIONER_WARNING": "1",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(client.communicate(), timeout=240)
    assert client.returncode == 0, stderr.decode()[-3000:]
    steps = {line["step"]: line for line in map(json.loads, stdout.decode().splitlines())}
    billed = steps["billed"]
    assert billed["status"] == "succeeded" and billed["amount_krw"] == billed["rated_krw"]
    assert billed["rated_records"] == billed["usage_reports"] > 0
    assert tracker.trace(uuid.UUID(billed["job_id"])).billed[0].amount_krw == billed["amount_krw"]
    refused = steps["refused"]
    assert (refused["code"], refused["scope"]) == ("invalid_request", "envelope")
    assert [error["location"] for error in refused["field_errors"]] == ["data.gpu_count"]
    assert (steps["unknown_cancel"]["code"], steps["unknown_cancel"]["scope"]) == ("unknown_job", "envelope")
    assert steps["cancelled"]["stage"] == "placed"
    assert steps["stream"]["of_other_tenants"] == 0
