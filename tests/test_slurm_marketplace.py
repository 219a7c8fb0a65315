"""The whole marketplace on a real Slurm cluster: tenants' signed requests go through the broker, placement
places them at a site whose factory agent runs them as Slurm jobs, and billing bills what Slurm accounted.
The agent is killed (-9) while jobs run and started again; a job exits non-zero; one is cancelled while it
runs. After: the six invariants hold, and each run's bill is sacct's elapsed GPU-seconds at the locked
price."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

from contracts.events import JobKind, JobRequest
from services.billing.storage import ChargeRow
from services.factory_agent.storage import RunRow, RunState
from services.placement.storage import PoolRow
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import charge_krw
from services.shared.settings import REPO_ROOT
from sovereign.stack.slurm import LocalSlurm, not_installed
from sovereign.submit import cancel_event
from sovereign.verification.workload import request_events
from tests.conftest import TEST_KEYS
from tests.fault_harness import Cluster, running_cluster, sender

pytestmark = [pytest.mark.slurm, pytest.mark.broker]

SITE, POOL = "nacc-haenam", "nacc-haenam-b200"
GPUS = 8
TIME_SCALE = 3600.0  # an expected hour runs for a second


@pytest.fixture
def slurm() -> Iterator[LocalSlurm]:
    if missing := not_installed():
        pytest.skip(missing)
    local = LocalSlurm(gpus=GPUS, partitions=(POOL,))
    local.start()
    try:
        yield local
    finally:
        local.stop()


def request(gpus: int, hours: float) -> JobRequest:
    return JobRequest(
        tenant_id="mois",
        client_request_id=f"slurm-{uuid.uuid4()}",
        name="Civil-complaint summariser fine-tune",
        kind=JobKind.FINE_TUNING,
        gpu_count=gpus,
        accelerator_model="B200",
        expected_hours=hours,
        deadline=datetime.now(UTC) + timedelta(days=3),
        csap_grade="medium",
    )


def slurm_env(local: LocalSlurm, fail_dir: Path) -> dict[str, str]:
    """The factory agent's settings for one site whose pool is the cluster's partition; short intervals."""
    return {
        **local.agent_env(SITE),
        "SOVEREIGN_SLURM_USAGE_INTERVAL_SECONDS": "2",
        "SOVEREIGN_TIME_SCALE": str(TIME_SCALE),
        "SOVEREIGN_FAIL_DIR": str(fail_dir),
    }


async def wait_for(cluster: Cluster, statement: object, at_least: int, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while cluster.count("factory-agent", statement) < at_least:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {at_least} runs: {statement}"
        await asyncio.sleep(0.2)


async def test_tenants_jobs_run_on_slurm_and_are_billed_what_sacct_accounted(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    price = next(
        pool.price_krw_per_gpu_hour
        for offer in load_catalogue(REPO_ROOT / "catalogue").offers
        for pool in offer.pools
        if pool.pool_id == POOL
    )
    # More GPUs asked than the node has, so some wait in Slurm's queue while others run; the one to be
    # cancelled would run for 30 s.
    requests = [request(gpus, hours) for gpus, hours in [(2, 4), (4, 5), (1, 3), (3, 30), (2, 4), (4, 3)]]
    failing, cancelled = requests[2], requests[3]
    (fail_dir / str(failing.job_id)).write_text("3")
    async with running_cluster(tmp_path / "cluster", env=slurm_env(slurm, fail_dir)) as cluster:
        events = request_events(requests, TEST_KEYS.tenants)
        await cluster.produce_as(sender(events[0][0]), events)

        started = select(func.count()).where(col(RunRow.started_reported))
        await wait_for(cluster, started, 2)
        agent = cluster.worker("factory-agent")
        cluster.signal(agent, signal.SIGKILL)
        await asyncio.sleep(1.0)  # Slurm goes on without it
        await cluster.wait_ready([cluster.start("factory-agent")])

        running = started.where(RunRow.job_id == str(cancelled.job_id))
        await wait_for(cluster, running, 1)
        cancel = cancel_event("mois", cancelled.job_id, "no longer needed", TEST_KEYS.tenants["mois"])
        await cluster.produce_as(sender(cancel), [(cancel, str(cancelled.job_id))])

        await cluster.settle({str(r.job_id) for r in requests}, within=180)
        violations = await cluster.check()
        assert not violations, "\n".join(map(str, violations))

        with Session(cluster.engine("placement")) as session:
            pool = session.get(PoolRow, POOL)
        # Offered at the node's GPUs from the start, and again after the restart (not at the catalogue's).
        assert pool is not None and (pool.total_gpus, pool.reserved_gpus) == (GPUS, 0)
        with Session(cluster.engine("billing")) as session:
            charges = session.exec(select(ChargeRow)).all()
        with Session(cluster.engine("factory-agent")) as session:
            runs = {run.run_id: run for run in session.exec(select(RunRow)).all()}
    accounted = slurm.accounted_gpu_seconds()
    assert len(runs) >= len(requests), runs.keys()
    # Every run was one Slurm job (none submitted twice across the kill: a second would be a job no run
    # names), and each run's bill is its accounting at the price locked at placement.
    assert sorted(accounted) == sorted(str(run.backend_ref) for run in runs.values())
    assert {(c.job_id, c.attempt) for c in charges} == {(r.job_id, r.attempt) for r in runs.values()}
    for charge in charges:
        run = next(r for r in runs.values() if (r.job_id, r.attempt) == (charge.job_id, charge.attempt))
        gpu_seconds = accounted[str(run.backend_ref)]
        assert charge.billed and charge.price_krw_per_gpu_hour == price
        assert (charge.rated_gpu_seconds, charge.rated_amount_krw) == (
            gpu_seconds,
            charge_krw(gpu_seconds, price),
        ), run.run_id
    by_job = {r.job_id: r for r in runs.values() if r.attempt == 1}
    assert by_job[str(failing.job_id)].state == RunState.FAILED
    assert by_job[str(cancelled.job_id)].state == RunState.CANCELLED
    assert 0 < accounted[str(by_job[str(cancelled.job_id)].backend_ref)] < 30 * 3
    assert all(accounted[str(r.backend_ref)] > 0 for r in runs.values())
