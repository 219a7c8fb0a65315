"""Placement deciding with the OPA server (as compose runs it, over policies/), and failing closed when that
server hangs or crashes: nothing is placed without a decision, and the jobs held meanwhile are decided once
it is back. (The fault suite's stand-in still covers an HTTP 500, which the real server cannot be made to
give.)"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from services.placement.storage import DecisionRow, JobRow
from sovereign.invariants import check
from sovereign.stack.opa import LocalOpa
from sovereign.watch import produce
from sovereign.workload import request_events
from tests.conftest import TEST_KEYS
from tests.fault_harness import running_cluster, seeded_workload
from tests.test_faults import CATALOGUE, HELD, all_in_states, wait_for

pytestmark = pytest.mark.production_stack


async def test_placement_on_the_opa_server_fails_closed_while_it_hangs_or_is_down(tmp_path: Path) -> None:
    server = LocalOpa(log_path=tmp_path / "opa.log")
    server.start()
    workload = seeded_workload(5, jobs=16, catalogue_dir=CATALOGUE, cancels=0, capacity_changes=0)
    batches = [workload.requests[i::3] for i in range(3)]
    try:
        async with running_cluster(tmp_path, env={"OPA_URL": server.url}) as cluster:
            bootstrap = cluster.settings.bootstrap_servers
            await produce(bootstrap, request_events(batches[0], TEST_KEYS.tenants), idempotent=False)
            await cluster.settle({str(r.job_id) for r in batches[0]})
            with Session(cluster.engine("placement")) as session:
                engines = set(session.exec(select(DecisionRow.engine)).all())
            assert engines == {"opa"}, engines  # decided by the server, not in-process
            for fault, batch in zip(("hang", "crash"), batches[1:], strict=True):
                server.pause() if fault == "hang" else server.kill()
                await produce(bootstrap, request_events(batch, TEST_KEYS.tenants), idempotent=False)
                waiting = {str(r.job_id) for r in batch}
                await wait_for(partial(all_in_states, cluster, waiting, HELD), f"{fault}: jobs held")
                with Session(cluster.engine("placement")) as session:
                    held = session.exec(select(JobRow).where(col(JobRow.job_id).in_(waiting))).all()
                reasons = [row.reason for row in held if row.state == "queued"]
                assert reasons and all("policy" in reason for reason in reasons), reasons
            faulted = {str(r.job_id) for batch in batches[1:] for r in batch}
            history = await cluster.history()
            placed_meanwhile = {str(e["data"]["job_id"]) for e in history.distinct("jobs.placed")} & faulted
            assert not placed_meanwhile, f"placed without the engine: {placed_meanwhile}"
            server.start()  # on the same port, as a restarted container
            await cluster.settle(workload.job_ids)
            history = await cluster.history()
            outcomes = {str(e["data"]["job_id"]) for e in history.distinct("jobs.placed")} | {
                str(e["data"]["job_id"]) for e in history.distinct("jobs.rejected")
            }
            assert faulted <= outcomes  # decided again once the server was back
            violations = check(history)
            assert not violations, "\n".join(map(str, violations))
    finally:
        server.kill()
