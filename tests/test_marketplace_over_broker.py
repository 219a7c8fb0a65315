"""The market over a real broker, on a small catalogue where outcomes are forced: three private sites, one
of them faulty (every run there fails), and a 16-GPU H100 pool that a single job can fill.

Cheapest allowed site chosen; queueing then placement when another job completes; deadline rejection;
cancellation releasing capacity; a failed run retried on another site, each run billed at its own price.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from contracts.events import (
    JobCompleted,
    JobCompletedEvent,
    JobKind,
    JobPlacedEvent,
    JobRequest,
    RejectionCode,
    UsageReported,
    UsageReportedEvent,
)
from services.billing import app as billing_app
from services.billing.check import check_billing
from services.billing.handlers import BillingContext, issue_invoice
from services.billing.queries import find_invoice
from services.factory_agent import app as factory_app
from services.placement import app as placement_app
from services.placement.storage import PoolRow
from services.shared.db import unit_of_work
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import charge_krw
from services.shared.kafka import consumer_group
from services.shared.runtime import Service
from services.shared.settings import REPO_ROOT, Settings
from sovereign.submit import cancel
from sovereign.verification.tracker import JobTrace, Tracker, following, wait_until
from sovereign.verification.watch import consumer_lag, produce
from sovereign.verification.workload import request_events
from tests.conftest import (
    KEYRING,
    TEST_KEYS,
    placed_at_haenam,
    run_services,
    service_settings,
    signing_as,
    wait_until_async,
)

pytestmark = pytest.mark.broker

TIME_SCALE = 360_000.0  # 100 simulated hours per real second
FAULTY_SITE = "sk-aws-ulsan"  # B200 at 7,400 KRW/GPU-h: the cheapest B200 here, and every run fails
SMALL_POOL_GPUS = 16  # skt-pangyo's H100 pool, shrunk so that one job fills it

Market = tuple[Settings, Tracker, Service, Service]  # ..., placement, billing


def small_catalogue(directory: Path) -> None:
    sites = json.loads((REPO_ROOT / "catalogue/sites.json").read_text())["sites"]
    chosen = [s for s in sites if s["site"]["site_id"] in {"skt-pangyo", FAULTY_SITE, "skt-gasan"}]
    for entry in chosen:
        for pool in entry["pools"]:
            if pool["pool_id"] == "skt-pangyo-h100":
                pool["gpu_count"] = SMALL_POOL_GPUS
    directory.mkdir(parents=True)
    (directory / "sites.json").write_text(json.dumps({"sites": chosen}))
    (directory / "tenants.json").write_text((REPO_ROOT / "catalogue/tenants.json").read_text())


@pytest.fixture(scope="module")
async def market(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Market]:
    catalogue = tmp_path_factory.mktemp("market") / "catalogue"
    small_catalogue(catalogue)
    settings = service_settings(
        kafka,
        tmp_path_factory.mktemp("data"),
        catalogue_dir=catalogue,
        time_scale=TIME_SCALE,
        site_failure_rates={FAULTY_SITE: 1.0},
    )
    builders = [
        lambda: placement_app.build(settings),
        lambda: factory_app.build(settings),
        lambda: billing_app.build(settings),
    ]
    async with run_services(builders) as services, following(kafka, Tracker()) as tracker:
        assert await wait_until(lambda: len(tracker.sites_offered) == 3, within=30)
        # Every test assumes placement has taken in all three offers.
        group = consumer_group("placement")
        assert await wait_until_async(
            lambda: consumer_lag(kafka, group, "capacity.offered"), lambda lag: lag == 0, within=30
        )
        yield settings, tracker, services[0], services[2]


def job(tenant: str = "hanbit-ai", **fields: object) -> JobRequest:
    return JobRequest.model_validate(
        {
            "tenant_id": tenant,
            "client_request_id": uuid.uuid4().hex,
            "name": "market test",
            "kind": JobKind.TRAINING,
            "gpu_count": 4,
            "expected_hours": 2,
            "deadline": "2030-01-01T00:00:00Z",
            **fields,
        }
    )


async def submit(settings: Settings, tracker: Tracker, *requests: JobRequest) -> list[JobTrace]:
    await produce(
        settings.bootstrap_servers, request_events(list(requests), TEST_KEYS.tenants), idempotent=False
    )
    return [tracker.trace(r.job_id) for r in requests]


def reserved_gpus(placement: Service) -> dict[str, int]:
    with Session(placement.engine) as session:
        return {pool.pool_id: pool.reserved_gpus for pool in session.exec(select(PoolRow))}


async def test_the_cheapest_allowed_site_wins_and_every_other_site_says_why_it_lost(market: Market) -> None:
    settings, tracker, _, _ = market
    cheapest, too_dear, not_allowed = await submit(
        settings,
        tracker,
        job(),
        job(accelerator_model="B200", max_price_krw_per_gpu_hour=7000),
        job("mois", csap_grade="high"),
    )
    assert await wait_until(lambda: cheapest.terminal and too_dear.terminal and not_allowed.terminal, 60)
    [placed] = cheapest.placed
    assert placed.site_id == "skt-pangyo" and placed.price_krw_per_gpu_hour == 4300
    ranks = {s.site_id: s.rank for s in placed.explanation.sites}
    assert ranks == {"skt-pangyo": 1, FAULTY_SITE: 2, "skt-gasan": 3}  # by price: 4,300 < 7,400 < 7,900

    [over_price] = too_dear.rejected
    assert over_price.code is RejectionCode.NEVER_FITS
    reasons = {s.site_id: s.capacity_reasons for s in over_price.explanation.sites}  # type: ignore[union-attr]
    assert any("above the maximum 7,000" in r for r in reasons[FAULTY_SITE])
    assert any("offers H100, not B200" in r for r in reasons["skt-pangyo"])

    [denied] = not_allowed.rejected
    assert denied.code is RejectionCode.NO_ALLOWED_SITE
    assert all(s.violations for s in denied.explanation.sites)  # type: ignore[union-attr]


async def test_a_queued_job_is_placed_when_the_job_ahead_completes(market: Market) -> None:
    settings, tracker, placement, _ = market
    # The first fills the pool for about three real seconds; the second must wait for it.
    [filling] = await submit(
        settings, tracker, job(accelerator_model="H100", gpu_count=SMALL_POOL_GPUS, expected_hours=300)
    )
    assert await wait_until(lambda: bool(filling.placed), within=30), filling.state
    [waiting] = await submit(settings, tracker, job(accelerator_model="H100", gpu_count=8))
    assert await wait_until(lambda: bool(waiting.queued), within=30), waiting.state
    assert "waiting for capacity" in waiting.queued[0].reason
    assert not filling.completed
    assert await wait_until(lambda: waiting.terminal == "billed", within=60), waiting.state
    assert filling.completed and waiting.placed[0].site_id == "skt-pangyo"
    # Billing and placement read jobs.completed apart: the bill may come before the release.
    assert await wait_until(lambda: reserved_gpus(placement)["skt-pangyo-h100"] == 0, within=10)


async def test_a_queued_job_past_its_deadline_is_rejected_and_a_cancel_frees_capacity(market: Market) -> None:
    settings, tracker, placement, _ = market
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    [blocking] = await submit(
        settings, tracker, job(accelerator_model="H100", gpu_count=SMALL_POOL_GPUS, expected_hours=8000)
    )
    assert await wait_until(lambda: bool(blocking.started), within=30)
    # A run of a few milliseconds: it could meet the deadline, had it not to wait for the pool.
    short = job(accelerator_model="H100", expected_hours=1e-6, deadline=deadline.isoformat())
    [late] = await submit(settings, tracker, short)
    # The placement service's queue sweep runs every few seconds: the rejection follows the deadline (or, in
    # its last milliseconds, the moment too little time is left for the run).
    assert await wait_until(lambda: bool(late.rejected), within=30), late.state
    ends = {RejectionCode.DEADLINE_PASSED, RejectionCode.DEADLINE_UNREACHABLE}
    assert late.queued and late.rejected[0].code in ends
    assert reserved_gpus(placement)["skt-pangyo-h100"] == SMALL_POOL_GPUS

    hanbit = signing_as(settings, TEST_KEYS.tenants["hanbit-ai"])
    assert await cancel(hanbit, "hanbit-ai", blocking.placed[0].job_id, "no longer needed") == 0
    assert await wait_until(lambda: blocking.terminal == "billed", within=30), blocking.state
    assert blocking.state == "cancelled" and blocking.completed[0].status == "cancelled"
    assert await wait_until(lambda: reserved_gpus(placement)["skt-pangyo-h100"] == 0, within=10)


async def test_a_failed_run_is_retried_on_another_site_and_each_run_is_billed(market: Market) -> None:
    settings, tracker, placement, _ = market
    retried, once = await submit(
        settings,
        tracker,
        job(accelerator_model="B200", expected_hours=3, max_attempts=2),
        job(accelerator_model="B200", expected_hours=3),
    )
    assert await wait_until(lambda: retried.terminal and once.terminal, within=60), (
        retried.state,
        once.state,
    )

    first, second = retried.placed
    assert (first.site_id, first.attempt) == (FAULTY_SITE, 1)
    assert (second.site_id, second.attempt, second.failed_sites) == ("skt-gasan", 2, [FAULTY_SITE])
    assert [c.status for c in sorted(retried.completed, key=lambda c: c.attempt)] == ["failed", "succeeded"]
    assert retried.state == "billed"
    for placed in (first, second):
        usage = [u for u in retried.usage if u.attempt == placed.attempt]
        [billed] = [b for b in retried.billed if b.attempt == placed.attempt]
        assert billed.site_id == placed.site_id and billed.usage_reports == len(usage)
        assert billed.amount_krw == charge_krw(
            sum(u.gpu_seconds for u in usage), placed.price_krw_per_gpu_hour
        )

    # A job that allows one run ends failed after it, billed for the intervals it completed.
    [only] = once.placed
    [completed] = once.completed
    assert only.site_id == FAULTY_SITE and completed.status == "failed" and once.state == "failed"
    assert once.billed[0].usage_reports == completed.usage_reports < 3
    assert await wait_until(lambda: not any(reserved_gpus(placement).values()), within=10)


async def test_invoices_hold_when_usage_is_late_repeated_or_reordered_and_the_stream_rebuilds_them(
    market: Market,
) -> None:
    """A run at a site this factory agent does not simulate, its events sent by hand: the first interval,
    then the March invoice issued, then the rest late, out of order and twice."""
    settings, tracker, _, billing_service = market
    job_id = uuid.uuid4()
    placed = placed_at_haenam(job_id).data
    march = datetime(2027, 3, 30, tzinfo=UTC)

    def usage(seq: int, gpu_seconds: int) -> tuple[UsageReportedEvent, str]:
        data = UsageReported(
            job_id=job_id,
            tenant_id="mois",
            site_id="nacc-haenam",
            pool_id=placed.pool_id,
            seq=seq,
            gpu_seconds=gpu_seconds,
            energy_wh=10,
            interval_start=march,
            interval_end=march,
        )
        event_id = uuid.uuid5(job_id, str(seq))
        return TEST_KEYS.factory.sign(
            UsageReportedEvent.create(
                source="factory/nacc-haenam", subject="mois", data=data, event_id=event_id
            )
        ), str(job_id)

    completed = JobCompleted(
        job_id=job_id,
        tenant_id="mois",
        site_id="nacc-haenam",
        pool_id=placed.pool_id,
        gpu_count=placed.gpu_count,
        status="succeeded",
        usage_reports=3,
        gpu_seconds=0,
    )
    first = JobPlacedEvent.create(source="service/placement", subject="mois", data=placed)
    await produce(settings.bootstrap_servers, [(first, str(job_id)), usage(1, 36_000)], idempotent=False)
    trace = tracker.trace(job_id)
    assert await wait_until(lambda: len(trace.rated) == 1, within=30)
    context = BillingContext(
        keyring=KEYRING,
        fee_bps=settings.marketplace_fee_bps,
        tenants=load_catalogue(settings.catalogue_dir).tenants,
    )
    with unit_of_work(billing_service.engine) as session:
        issued = issue_invoice(context, session, "mois", "2027-03", datetime.now(UTC))
    billing_service.relay.wake()
    late = [usage(3, 1_800), usage(2, 7_200), usage(2, 7_200), usage(3, 1_800)]
    done = TEST_KEYS.factory.sign(
        JobCompletedEvent.create(source="factory/nacc-haenam", subject="mois", data=completed)
    )
    await produce(settings.bootstrap_servers, [*late, (done, str(job_id))], idempotent=False)
    assert await wait_until(lambda: bool(trace.billed), within=30)
    assert await wait_until(
        lambda: any(i.invoice_id == issued.invoice_id for i in tracker.invoices), within=30
    )

    [billed] = trace.billed
    assert billed.amount_krw == charge_krw(36_000 + 7_200 + 1_800, placed.price_krw_per_gpu_hour)
    assert sorted(r.seq for r in trace.rated) == [1, 2, 3]  # each interval rated once
    assert [r.invoice_period for r in sorted(trace.rated, key=lambda r: r.seq)] == [
        "2027-03",
        "2027-04",
        "2027-04",
    ]
    with Session(billing_service.engine) as session:
        tenant = context.tenants["mois"]
        march_now, april = find_invoice(session, tenant, "2027-03"), find_invoice(session, tenant, "2027-04")
        check = check_billing(session, context.tenants)
    assert march_now is not None and march_now.invoice == issued  # an issued invoice never changes
    assert april is not None and all(line.adjustment for line in april.invoice.lines)
    assert check.ok, check.problems
    # A consumer that reads billing.usage from the start rebuilds every invoice's subtotal.
    rebuilt: dict[str, int] = {}
    for rated in (r for t in tracker.jobs.values() for r in t.rated if r.tenant_id == "mois"):
        rebuilt[rated.invoice_period] = rebuilt.get(rated.invoice_period, 0) + rated.amount_krw
    assert (
        rebuilt["2027-03"]
        == issued.subtotal_krw
        == next(i for i in tracker.invoices if i.invoice_id == issued.invoice_id).subtotal_krw
    )
    assert rebuilt["2027-04"] == april.invoice.subtotal_krw


async def test_a_run_over_budget_is_refused(market: Market) -> None:
    settings, tracker, _, _ = market
    # hanbit-ai has 3,000,000,000 KRW prepaid; 1,000 B200 for 500 h at 7,400 would cost 3,700,000,000.
    [over] = await submit(
        settings, tracker, job(accelerator_model="B200", gpu_count=1000, expected_hours=500)
    )
    assert await wait_until(lambda: bool(over.rejected), within=30), over.state
    assert over.rejected[0].code is RejectionCode.BUDGET_EXCEEDED
    assert "3,700,000,000 KRW" in over.rejected[0].reason and "prepaid budget" in over.rejected[0].reason
