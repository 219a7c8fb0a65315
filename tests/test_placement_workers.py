"""Two placement workers in one consumer group, racing for one small pool: never more than its capacity."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from contracts.events import CapacityOffered, CapacityOfferedEvent, JobKind, JobRequest
from services.placement import app as placement_app
from services.placement.storage import JobRow, PoolRow
from services.shared.settings import REPO_ROOT
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import produce
from sovereign.verification.workload import request_events
from tests.conftest import TEST_KEYS, run_services, service_settings

pytestmark = pytest.mark.broker

POOL_GPUS = 24


def one_small_site_catalogue(directory: Path) -> CapacityOffered:
    sites = json.loads((REPO_ROOT / "catalogue/sites.json").read_text())["sites"]
    entry = next(s for s in sites if s["site"]["site_id"] == "skt-pangyo")
    entry["pools"][0]["gpu_count"] = POOL_GPUS
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sites.json").write_text(json.dumps({"sites": [entry]}))
    (directory / "tenants.json").write_text((REPO_ROOT / "catalogue/tenants.json").read_text())
    return CapacityOffered.model_validate(entry)


async def test_two_workers_never_oversubscribe_a_pool(
    kafka: str, tmp_path: Path, database_url: tuple[str, str]
) -> None:
    url, prefix = database_url
    offer = one_small_site_catalogue(tmp_path / "catalogue")
    settings = service_settings(
        kafka,
        tmp_path / "data",
        catalogue_dir=tmp_path / "catalogue",
        database_url=None if url.startswith("sqlite") else url,
        database_schema_prefix=prefix,
    )
    rng = random.Random(5)
    requests = [
        JobRequest.model_validate(
            {
                "tenant_id": "hanbit-ai",
                "client_request_id": f"race-{uuid.uuid4().hex}",
                "name": f"burst {i}",
                "kind": JobKind.INFERENCE,
                "gpu_count": rng.randint(1, 4),
                "expected_hours": 1,
                "deadline": "2030-01-01T00:00:00Z",
            }
        )
        for i in range(60)
    ]
    job_ids = {r.job_id for r in requests}
    builders = [lambda: placement_app.build(settings), lambda: placement_app.build(settings)]
    async with run_services(builders) as workers, following(kafka, Tracker()) as tracker:
        await produce(
            kafka,
            [
                (
                    TEST_KEYS.factory.sign(
                        CapacityOfferedEvent.create(
                            source="factory/skt-pangyo", subject="skt-pangyo", data=offer
                        )
                    ),
                    "skt-pangyo",
                )
            ],
            idempotent=False,
        )
        await produce(kafka, request_events(requests, TEST_KEYS.tenants), idempotent=False)
        decided = lambda: all(tracker.trace(j).placed or tracker.trace(j).queued for j in job_ids)  # noqa: E731
        assert await wait_until(decided, within=60), tracker.states(job_ids)
        # Both workers took part: the group split the request topic's partitions between them.
        for worker in workers:
            [consumer] = [
                getattr(s, "consumer", None)
                for s in worker.broker.subscribers
                if "jobs.requested" in str(getattr(s, "topics", ""))
            ]
            assert consumer is not None and consumer.assignment()
        engine = workers[0].engine

    placed = [tracker.trace(r.job_id).placed[0] for r in requests if tracker.trace(r.job_id).placed]
    assert sum(p.gpu_count for p in placed) <= POOL_GPUS
    assert all(len(tracker.trace(j).placed) <= 1 for j in job_ids)
    with Session(engine) as session:
        pool = session.get(PoolRow, offer.pools[0].pool_id)
        assert pool is not None
        placed_in_db = session.exec(select(func.sum(JobRow.gpu_count)).where(JobRow.state == "placed")).one()
        assert pool.reserved_gpus == placed_in_db == sum(p.gpu_count for p in placed)
    assert sum(p.gpu_count for p in placed) >= POOL_GPUS - 3  # the pool was actually contended and filled
