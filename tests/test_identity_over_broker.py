"""Who may say what, over a real Kafka-protocol broker: requests, cancels, capacity offers and usage reports
that do not prove who sent them go to the dead-letter topic with the reason, and change nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import AnyEvent, job_id_for
from contracts.events import (
    CapacityOfferedEvent,
    JobCompleted,
    JobCompletedEvent,
    JobRequest,
    JobRequestedEvent,
    UsageReported,
    UsageReportedEvent,
)
from services.billing import app as billing_app
from services.factory_agent import app as factory_app
from services.placement import app as placement_app
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import period_of
from services.shared.domain.signing import Signer
from services.shared.kafka import consumer_group
from services.shared.settings import REPO_ROOT, Settings
from sovereign.attest_commands import attest_verify
from sovereign.submit import cancel_event
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import consumer_lag
from tests.conftest import TEST_KEYS, run_services, service_settings, settled, wait_until_async
from tests.test_flow_over_broker import job

pytestmark = pytest.mark.broker

Market = tuple[Settings, Tracker]


@pytest.fixture(scope="module")
async def market(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Market]:
    settings = service_settings(kafka, tmp_path_factory.mktemp("data"), time_scale=360_000.0)
    builders = [
        lambda: placement_app.build(settings),
        lambda: factory_app.build(settings),
        lambda: billing_app.build(settings),
    ]
    async with run_services(builders), following(kafka, Tracker()) as tracker:
        yield settings, tracker


def envelope(request: JobRequest, signer: Signer | None, **changes: object) -> JobRequestedEvent:
    event = JobRequestedEvent.create(
        source=f"tenant/{request.tenant_id}", subject=request.tenant_id, data=request
    )
    event = event.model_copy(update=changes)
    return signer.sign(event) if signer else event


async def send(settings: Settings, topic: str, payloads: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for payload in payloads:
            await producer.send_and_wait(topic, payload, key=b"identity")
    finally:
        await producer.stop()


async def dead_letters(settings: Settings, topic: str, count: int) -> list[tuple[bytes, str]]:
    """The first `count` records of the topic's dead-letter topic: (original bytes, the error header)."""
    consumer = AIOKafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    dead: list[tuple[bytes, str]] = []
    deadline = asyncio.get_running_loop().time() + 30
    try:
        while len(dead) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(dead)} of {count} dead letters"
            batch = await consumer.getmany(timeout_ms=1000)
            dead += [
                (r.value or b"", dict(r.headers)["dlq-error"].decode()) for rs in batch.values() for r in rs
            ]
    finally:
        await consumer.stop()
    return dead


async def test_requests_that_do_not_prove_their_tenant_are_refused_and_never_placed(market: Market) -> None:
    settings, tracker = market
    stranger = Signer("stranger-key", Ed25519PrivateKey.generate())
    hanbit = TEST_KEYS.tenants["hanbit-ai"]
    unsigned, tampered, unknown, impersonated, factory_signed = (job() for _ in range(5))
    signed_then_changed = envelope(tampered, hanbit)
    forged = [
        envelope(unsigned, None),
        # Signed, then changed on the way: 4 GPUs became 8.
        signed_then_changed.model_copy(update={"data": tampered.model_copy(update={"gpu_count": 8})}),
        envelope(unknown, stranger),
        envelope(factory_signed, TEST_KEYS.factory),
    ]
    # mois's key, claiming to be hanbit-ai: mois proved who it is, so mois is told.
    impersonating = envelope(impersonated, TEST_KEYS.tenants["mois"])
    honest = job(client_id="after-forgeries")
    await send(settings, "jobs.requested", [e.model_dump_json().encode() for e in [*forged, impersonating]])
    await send(settings, "jobs.requested", [envelope(honest, hanbit).model_dump_json().encode()])
    assert await wait_until(lambda: bool(tracker.trace(honest.job_id).placed), within=30)

    dead = dict(await dead_letters(settings, "jobs.requested", len(forged)))
    reasons = [dead[e.model_dump_json().encode()] for e in forged]
    assert "unsigned" in reasons[0]
    assert "bad signature" in reasons[1]
    assert "unknown key 'stranger-key'" in reasons[2]
    assert "has the factory role, not the tenant role" in reasons[3]
    told = tracker.trace(job_id_for("mois", impersonated.client_request_id))
    assert await wait_until(lambda: bool(told.refused), within=30)
    [refusal] = told.refused
    assert (refusal.tenant_id, refusal.code) == ("mois", "invalid_request")
    assert refusal.envelope_id == impersonating.id
    assert "does not speak for 'hanbit-ai'" in refusal.reason
    for event in [*forged, impersonating]:
        trace = tracker.trace(event.data.job_id)
        assert not trace.placed and not trace.rejected and not trace.queued


async def test_a_stale_request_is_rejected_and_a_replayed_one_changes_nothing(market: Market) -> None:
    settings, tracker = market
    hanbit = TEST_KEYS.tenants["hanbit-ai"]
    old = job(client_id="signed-an-hour-ago")
    stale = envelope(old, hanbit, time=datetime.now(UTC) - timedelta(hours=1))
    fresh = job(client_id="replayed")
    original = envelope(fresh, hanbit).model_dump_json().encode()
    await send(settings, "jobs.requested", [stale.model_dump_json().encode(), original])
    assert await wait_until(lambda: bool(tracker.trace(old.job_id).rejected), within=30)
    [rejected] = tracker.trace(old.job_id).rejected
    assert rejected.code.value == "stale_request" and "more than 900 s before" in rejected.reason
    assert await wait_until(lambda: bool(tracker.trace(fresh.job_id).placed), within=30)
    # Someone copies the signed envelope onto the topic again, byte for byte.
    await send(settings, "jobs.requested", [original, original])
    assert await wait_until_async(
        lambda: consumer_lag(settings.bootstrap_servers, consumer_group("placement"), "jobs.requested"),
        lambda lag: lag == 0,
        within=30,
    )
    await settled(settings, tracker)
    trace = tracker.trace(fresh.job_id)
    assert len(trace.placed) == 1 and not trace.rejected


async def test_a_cancel_by_another_tenants_key_is_refused_to_its_signer(market: Market) -> None:
    settings, tracker = market
    target = job(client_id="not-yours-to-cancel", expected_hours=600)
    await send(
        settings,
        "jobs.requested",
        [envelope(target, TEST_KEYS.tenants["hanbit-ai"]).model_dump_json().encode()],
    )
    assert await wait_until(lambda: bool(tracker.trace(target.job_id).started), within=30)
    # mois's key on a cancel that claims to come from hanbit-ai.
    forged = cancel_event("hanbit-ai", target.job_id, "sabotage", TEST_KEYS.tenants["mois"])
    await send(settings, "jobs.cancel", [forged.model_dump_json().encode()])
    trace = tracker.trace(target.job_id)
    assert await wait_until(lambda: bool(trace.refused), within=30)
    [refusal] = trace.refused
    assert (refusal.tenant_id, refusal.code) == ("mois", "invalid_request")
    assert refusal.envelope_type == "jobs.cancel"
    assert "does not speak for 'hanbit-ai'" in refusal.reason
    assert not trace.cancelled and trace.placed


async def test_unsigned_capacity_and_usage_reports_are_refused(market: Market) -> None:
    settings, tracker = market
    offer = load_catalogue(REPO_ROOT / "catalogue").offers[0]
    # Somebody offers capacity for a real site without the factory's key.
    unsigned_offer = CapacityOfferedEvent.create(
        source="factory/impostor", subject=offer.site.site_id, data=offer
    )
    # And bills a tenant for usage nobody ran, signed by a tenant's key.
    usage = UsageReported(
        job_id=uuid.uuid4(),
        tenant_id="mois",
        site_id=offer.site.site_id,
        pool_id=offer.pools[0].pool_id,
        seq=1,
        gpu_seconds=3600,
        energy_wh=1000,
        interval_start=datetime.now(UTC) - timedelta(hours=1),
        interval_end=datetime.now(UTC),
    )
    tenant_usage: AnyEvent = TEST_KEYS.tenants["mois"].sign(
        UsageReportedEvent.create(source="factory/impostor", subject="mois", data=usage)
    )
    # And ends a run that no factory ended, which would free its GPUs and bill it.
    done = JobCompleted(
        job_id=usage.job_id,
        tenant_id="mois",
        site_id=usage.site_id,
        pool_id=usage.pool_id,
        gpu_count=8,
        status="succeeded",
        usage_reports=1,
        gpu_seconds=3600,
    )
    forged_end = JobCompletedEvent.create(source="factory/impostor", subject="mois", data=done)
    await send(settings, "capacity.offered", [unsigned_offer.model_dump_json().encode()])
    await send(settings, "usage.reported", [tenant_usage.model_dump_json().encode()])
    await send(settings, "jobs.completed", [forged_end.model_dump_json().encode()])
    [(_, offer_reason)] = await dead_letters(settings, "capacity.offered", 1)
    [(_, usage_reason)] = await dead_letters(settings, "usage.reported", 1)
    end_reasons = [reason for _, reason in await dead_letters(settings, "jobs.completed", 2)]
    assert f"must be signed with the factory key of {offer.site.site_id!r}" in offer_reason
    assert "has the tenant role, not the factory role" in usage_reason
    assert len(end_reasons) == 2 and all("unsigned" in reason for reason in end_reasons)  # placement, billing
    assert not tracker.trace(usage.job_id).rated and not tracker.trace(usage.job_id).billed


async def test_an_auditor_verifies_the_months_placements_from_the_topic(
    market: Market, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, tracker = market
    request = job(client_id="attested")
    await send(
        settings,
        "jobs.requested",
        [envelope(request, TEST_KEYS.tenants["hanbit-ai"]).model_dump_json().encode()],
    )
    assert await wait_until(lambda: bool(tracker.trace(request.job_id).placed), within=30)
    [placed] = tracker.trace(request.job_id).placed
    assert placed.attestation is not None
    month = period_of(placed.attestation.claim.placed_at)
    assert await attest_verify(None, None, month, settings) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    verified = int(summary.split()[0])
    assert verified >= 1 and summary.endswith("verified; 0 failed")
