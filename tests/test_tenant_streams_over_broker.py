"""Each tenant's own stream, over a real Kafka-protocol broker: it carries everything about the tenant's jobs
(outcomes, the factory's reports on its runs, usage and bills) and nothing about anyone else's. A factory
cannot write into it, and a tenant the registry does not know has none."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import AnyEvent, model_for, tenant_stream
from contracts.events import (
    TENANT_STREAM_TYPES,
    JobPlacedEvent,
    JobStarted,
    JobStartedEvent,
)
from services.registry import SERVICES
from services.shared.domain.attestation import placement_attestation_failure
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import KeyRole
from services.shared.kafka import consumer_group
from services.shared.settings import REPO_ROOT, Settings
from sovereign.submit import cancel_event, submit
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import consumer_lag, header, produce, read_records
from sovereign.verification.workload import generate, request_events
from tests.conftest import (
    KEYRING,
    TEST_KEYS,
    run_services,
    service_settings,
    settled,
    signing_as,
    wait_until_async,
)
from tests.test_flow_over_broker import job
from tests.test_identity_over_broker import dead_letters, send

pytestmark = pytest.mark.broker

Market = tuple[Settings, Tracker]
REGISTERED = sorted(load_catalogue(REPO_ROOT / "catalogue").tenants)


@pytest.fixture(scope="module")
async def market(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Market]:
    settings = service_settings(kafka, tmp_path_factory.mktemp("data"), time_scale=360_000.0)
    builders = [
        partial(entry.build, settings) for entry in SERVICES.values()
    ]  # each as `sovereign run` builds it
    async with run_services(builders), following(kafka, Tracker()) as tracker:
        yield settings, tracker


async def stream_of(settings: Settings, tenant: str) -> list[AnyEvent]:
    """Everything on the tenant's stream, decoded as the tenant reads it."""
    events = []
    for record in await read_records(settings.bootstrap_servers, [tenant_stream(tenant)], quiet_ms=300):
        model = model_for(record.topic, header(record, "event_type"))
        assert model is not None, f"{record.topic} carries a record no tenant stream carries: {record}"
        events.append(model.model_validate_json(record.value or b""))
    return events


async def told_on_shared_topics(settings: Settings) -> dict[str, set[tuple[str, uuid.UUID]]]:
    """(source, id) of every event a stream carries, found on the shared topics, by the tenant it is about."""
    about: dict[str, set[tuple[str, uuid.UUID]]] = {}
    records = await read_records(settings.bootstrap_servers, sorted(TENANT_STREAM_TYPES), quiet_ms=300)
    for record in records:
        model = model_for(record.topic, None)
        assert model is not None
        event = model.model_validate_json(record.value or b"")
        about.setdefault(event.data.tenant_id, set()).add((event.source, event.id))
    return about


async def test_each_tenant_reads_all_about_its_jobs_and_nothing_about_anyone_elses(market: Market) -> None:
    settings, tracker = market
    requests = generate(16, seed=7)
    # One long run, cancelled while it runs: the cancel, and the bill for what it ran, reach its tenant.
    long_run = job(client_id="cancelled-while-running", expected_hours=600)
    await produce(
        settings.bootstrap_servers,
        [*request_events(requests, TEST_KEYS.tenants), *request_events([long_run], TEST_KEYS.tenants)],
        idempotent=False,
    )
    assert await wait_until(lambda: bool(tracker.trace(long_run.job_id).started), within=60)
    cancel = cancel_event(long_run.tenant_id, long_run.job_id, "not needed", TEST_KEYS.tenants["hanbit-ai"])
    await produce(settings.bootstrap_servers, [(cancel, str(long_run.job_id))], idempotent=False)
    job_ids = {r.job_id for r in [*requests, long_run]}
    assert await wait_until(lambda: tracker.all_terminal(job_ids), within=90), tracker.states(job_ids)
    unregistered = {r.tenant_id for r in requests} - set(REGISTERED)
    assert unregistered, "the workload has a tenant the registry does not know"

    async def streams_complete() -> int:
        shared = await told_on_shared_topics(settings)
        streams = {t: {(e.source, e.id) for e in await stream_of(settings, t)} for t in REGISTERED}
        return sum(streams[t] != shared.get(t, set()) for t in REGISTERED)

    # Every event about a registered tenant on a shared topic is on that tenant's stream, and nothing else.
    assert await wait_until_async(streams_complete, lambda incomplete: incomplete == 0, within=30)
    kinds: set[str] = set()
    for tenant in REGISTERED:
        for event in await stream_of(settings, tenant):
            assert event.data.tenant_id == tenant and event.subject == tenant, event
            kinds.add(event.type)
            if event.type in {"jobs.started", "jobs.completed"}:
                # Relayed as the factory signed it: the tenant can check who reported on its run.
                assert KEYRING.refusal(event, KeyRole.FACTORY, event.data.site_id) is None
            if isinstance(event, JobPlacedEvent):
                # And prove where its job ran from its own stream alone.
                assert placement_attestation_failure(event.data, KEYRING) is None
    assert {
        "jobs.placed",
        "jobs.rejected",
        "jobs.started",
        "jobs.completed",
        "jobs.billed",
        "billing.usage",
        "jobs.cancelled",
    } <= kinds
    # A tenant the registry does not know has no stream, and its rejection held up nobody else's.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {tenant_stream(t) for t in REGISTERED} <= topics
    assert not {tenant_stream(t) for t in unregistered} & topics
    rejected = [tracker.trace(r.job_id).rejected for r in requests if r.tenant_id in unregistered]
    assert rejected and all(r and r[0].code.value == "unknown_tenant" for r in rejected)


async def test_a_factory_cannot_report_on_a_run_placed_elsewhere_or_write_into_a_stream(
    market: Market,
) -> None:
    settings, tracker = market
    request = job(client_id="reported-on-by-strangers", expected_hours=600)
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    assert await wait_until(lambda: bool(tracker.trace(request.job_id).placed), within=30)
    [placed] = tracker.trace(request.job_id).placed
    elsewhere = next(s for s in load_catalogue(REPO_ROOT / "catalogue").site_ids if s != placed.site_id)
    # Validly signed by a factory key of the other site: it speaks for that site, not for this run.
    other_site = JobStarted(
        job_id=request.job_id,
        tenant_id=request.tenant_id,
        site_id=elsewhere,
        pool_id=placed.pool_id,
        gpu_count=placed.gpu_count,
    )
    # The right site, but claiming the job is another tenant's: it would land in that tenant's stream.
    other_tenant = other_site.model_copy(update={"site_id": placed.site_id, "tenant_id": "mois"})
    # The right run, in an envelope addressed to another tenant.
    own_run = other_site.model_copy(update={"site_id": placed.site_id})
    forged = [
        TEST_KEYS.factory.sign(JobStartedEvent.create(source="factory/x", subject=subject, data=data))
        for data, subject in (
            (other_site, request.tenant_id),
            (other_tenant, "mois"),
            (own_run, "mois"),
        )
    ]
    await send(settings, "jobs.started", [event.model_dump_json().encode() for event in forged])
    reasons = dict(await dead_letters(settings, "jobs.started", len(forged)))
    assert [reasons[event.model_dump_json().encode()] for event in forged] == [
        *(
            f"run 1 of job {request.job_id} of tenant {tenant} was not placed at {site}, which reports on it"
            for tenant, site in ((request.tenant_id, elsewhere), ("mois", placed.site_id))
        ),
        f"a report on tenant {request.tenant_id}'s run sent with subject mois",
    ]
    assert await wait_until_async(
        lambda: consumer_lag(settings.bootstrap_servers, consumer_group("placement"), "jobs.started"),
        lambda lag: lag == 0,
        within=30,
    )
    forged_ids = {event.id for event in forged}
    for tenant in ("mois", request.tenant_id):
        assert not forged_ids & {event.id for event in await stream_of(settings, tenant)}

    # The real factory's report on the run did reach its tenant.
    async def started_on_the_stream() -> int:
        events = await stream_of(settings, request.tenant_id)
        return sum(e.type == "jobs.started" and e.data.job_id == request.job_id for e in events)

    assert await wait_until_async(started_on_the_stream, lambda count: count == 1, within=30)


async def test_submit_refuses_a_tenant_without_a_stream_before_sending_anything(
    market: Market, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, tracker = market
    request = job(tenant="nobody", client_id="no-stream-to-follow")
    job_file = tmp_path / "job.json"
    job_file.write_text(request.model_dump_json())
    assert await submit(job_file, signing_as(settings, TEST_KEYS.tenants["nobody"]), wait_seconds=5) == 2
    assert "no stream tenant.nobody: is 'nobody' in the tenant registry?" in capsys.readouterr().err
    await settled(settings, tracker)
    assert not tracker.trace(request.job_id).requests
