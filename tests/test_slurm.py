"""The Slurm adapter's commands on a real Slurm 22.05 cluster with accounting (slurmdbd on MariaDB), started
for this module: GPU jobs run as GRES, are charged to the tenant's account at its priority class's QOS,
fail, are cancelled and are accounted to the second; a drained node's GPUs leave the offer."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from contracts.events import (
    JobCancelled,
    JobCancelledEvent,
    JobCompletedEvent,
    JobKind,
    JobRequest,
    UsageReportedEvent,
)
from services.factory_agent.app import build_backend, drive_runs_once
from services.factory_agent.backends import SlurmBackend
from services.factory_agent.handlers import FactoryContext, active_runs, on_job_cancelled, on_job_placed
from services.factory_agent.slurm import (
    QOS_PRIORITIES,
    RUN_END,
    SlurmCluster,
    SlurmJob,
    SlurmState,
    Submission,
    _parse_sacct_line,
    accounted_intervals,
)
from services.factory_agent.storage import TABLES as FACTORY_TABLES
from services.shared.db import unit_of_work
from services.shared.settings import Settings
from sovereign.stack.slurm import LAUNCH_SCRIPT, LocalSlurm, not_installed
from tests.conftest import placed_at_haenam
from tests.storage_support import CATALOGUE, make_engine, outbox

GPUS = 8
PARTITION = "gpu"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSlurm, SlurmCluster, Path]]:
    if missing := not_installed():
        pytest.skip(missing)
    local = LocalSlurm(gpus=GPUS, partitions=(PARTITION,))
    local.start()
    fail_dir = tmp_path_factory.mktemp("fail")
    commands = SlurmCluster({**local.env, "SOVEREIGN_FAIL_DIR": str(fail_dir)})
    asyncio.run(commands.ensure_qos())
    try:
        yield local, commands, fail_dir
    finally:
        local.stop()


def submission(run_seconds: int = 2, gpus: int = 2, priority: str = "normal") -> Submission:
    job_id = str(uuid.uuid4())
    return Submission(
        run_id=f"{job_id}/1",
        job_id=job_id,
        tenant_id="mois",
        kind="training",
        partition=PARTITION,
        gpu_count=gpus,
        priority=priority,
        time_limit_minutes=5,
        deadline=None,
        run_seconds=run_seconds,
        launch_script=LAUNCH_SCRIPT,
    )


def wait_for_job(commands: SlurmCluster, job_id: str, done: str = "ended", timeout: float = 60) -> SlurmJob:
    """Until the job has `done` (ended, or started) in Slurm's accounting."""
    deadline = time.monotonic() + timeout
    while True:
        job = asyncio.run(commands.jobs([job_id])).get(job_id)
        if job is not None and getattr(job, done):
            return job
        assert time.monotonic() < deadline, f"Slurm job {job_id} not {done}: {job}"
        time.sleep(0.2)


def started_job(commands: SlurmCluster, run_seconds: int, gpus: int) -> str:
    """A job submitted and running on its GPUs."""
    job_id = asyncio.run(commands.submit(submission(run_seconds=run_seconds, gpus=gpus)))
    wait_for_job(commands, job_id, done="started")
    return job_id


def accounting_of(local: LocalSlurm, job_id: str) -> str:
    return local.command("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "Account,QOS,JobName").strip()


@pytest.mark.slurm
def test_a_gpu_job_runs_under_the_tenants_account_and_is_accounted_to_the_second(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    local, commands, _ = cluster
    asked = submission(run_seconds=2, gpus=2, priority="urgent")
    job_id = asyncio.run(commands.submit(asked))
    job = wait_for_job(commands, job_id)
    assert job.state is SlurmState.COMPLETED and RUN_END[job.state] == "succeeded"
    assert job.gpus == 2 and job.elapsed_seconds >= 2
    assert job.start is not None and job.end is not None
    assert (job.end - job.start).total_seconds() == job.elapsed_seconds
    # slurmdbd holds a just-ended job under the name "allocation" for up to a second before its record
    # catches up (measured under load): the accounting is complete once it has the job's name.
    expected = f"mois|urgent|sov-{asked.job_id}-1"
    deadline = time.monotonic() + 30
    while (account := accounting_of(local, job_id)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert account == expected
    intervals = accounted_intervals(job, interval_seconds=1, power_kw_per_gpu=1.0, pue=1.2)
    assert sum(interval.gpu_seconds for interval in intervals) == job.elapsed_seconds * 2


@pytest.mark.slurm
def test_a_run_is_submitted_once_however_often_it_is_asked(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    """Asked again while queued, and again in the second it ended (where sacct alone once missed it)."""
    _, commands, _ = cluster
    runs = [submission(run_seconds=1) for _ in range(4)]
    first = [asyncio.run(commands.submit(asked)) for asked in runs]
    assert [asyncio.run(commands.submit(asked)) for asked in runs] == first
    for asked, job_id in zip(runs, first, strict=True):
        wait_for_job(commands, job_id)
        assert asyncio.run(commands.submit(asked)) == job_id


@pytest.mark.slurm
def test_a_job_that_exits_non_zero_fails_with_slurms_reason(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    _, commands, fail_dir = cluster
    asked = submission(run_seconds=1)
    (fail_dir / asked.job_id).write_text("3")
    job = wait_for_job(commands, asyncio.run(commands.submit(asked)))
    assert job.state is SlurmState.FAILED and RUN_END[job.state] == "failed"
    assert "FAILED" in job.why_it_ended() and "3:0" in job.why_it_ended()


@pytest.mark.slurm
def test_cancelled_while_pending_it_never_starts_and_while_running_it_is_accounted(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    _, commands, _ = cluster
    running = started_job(commands, run_seconds=60, gpus=GPUS)
    pending = asyncio.run(commands.submit(submission(run_seconds=60, gpus=1)))  # no GPU is free
    asyncio.run(commands.cancel(pending))
    asyncio.run(commands.cancel(running))
    never_ran = wait_for_job(commands, pending)
    assert never_ran.state is SlurmState.CANCELLED and not never_ran.started
    assert accounted_intervals(never_ran, 1, 1.0, 1.0) == []
    stopped = wait_for_job(commands, running)
    assert stopped.state is SlurmState.CANCELLED and RUN_END[stopped.state] == "cancelled"
    assert stopped.started and stopped.gpus == GPUS


@pytest.mark.slurm
def test_a_job_runs_on_through_a_restart_of_slurmctld_and_is_accounted_whole(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    local, commands, _ = cluster
    job_id = started_job(commands, run_seconds=4, gpus=1)
    local.restart("slurmctld")
    job = wait_for_job(commands, job_id)
    assert job.state is SlurmState.COMPLETED and job.elapsed_seconds >= 4
    assert sum(i.gpu_seconds for i in accounted_intervals(job, 1, 1.0, 1.0)) == job.elapsed_seconds


@pytest.mark.slurm
def test_a_node_set_down_under_a_running_job_fails_it_for_the_marketplace_to_retry(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    local, commands, _ = cluster
    job_id = started_job(commands, run_seconds=60, gpus=1)
    local.command("scontrol", "update", f"nodename={local.node}", "state=down", "reason=power")
    job = wait_for_job(commands, job_id)
    # Its slurmd still answers, so the node returns by itself (ReturnToService=2); resume it if not.
    local.command("scontrol", "update", f"nodename={local.node}", "state=resume", check=False)
    deadline = time.monotonic() + 60
    while asyncio.run(commands.gpus_by_partition()) != {PARTITION: GPUS}:
        assert time.monotonic() < deadline, "the node did not return to service"
        time.sleep(0.2)
    assert job.state is SlurmState.NODE_FAIL and RUN_END[job.state] == "failed"
    assert "NODE_FAIL" in job.why_it_ended()
    assert job.started and job.elapsed_seconds >= 0


@pytest.mark.slurm
def test_a_drained_node_takes_its_gpus_out_of_the_offer_until_it_returns(
    cluster: tuple[LocalSlurm, SlurmCluster, Path],
) -> None:
    local, commands, _ = cluster
    assert asyncio.run(commands.gpus_by_partition()) == {PARTITION: GPUS}
    local.command("scontrol", "update", f"nodename={local.node}", "state=drain", "reason=maintenance")
    assert asyncio.run(commands.gpus_by_partition()) == {PARTITION: 0}
    local.command("scontrol", "update", f"nodename={local.node}", "state=resume")
    assert asyncio.run(commands.gpus_by_partition()) == {PARTITION: GPUS}


def slurm_site(commands: SlurmCluster, tmp_path: Path) -> tuple[Engine, FactoryContext, SlurmBackend]:
    """A factory agent's database, context and Slurm backend for the catalogue's nacc-haenam."""
    engine = make_engine((f"sqlite:///{tmp_path / 'factory.db'}", ""), "factory-agent", FACTORY_TABLES)
    context = FactoryContext(
        offers={o.site.site_id: o for o in CATALOGUE.offers if o.site.site_id == "nacc-haenam"}
    )
    backend = SlurmBackend(
        commands,
        partitions={pool.pool_id: PARTITION for pool in context.offers["nacc-haenam"].pools},
        launch_scripts=dict.fromkeys([kind.value for kind in JobKind], LAUNCH_SCRIPT),
        time_scale=3600,  # an expected hour runs for a second
        interval_seconds=1,
    )
    return engine, context, backend


def drive_until(engine: Engine, backend: SlurmBackend, context: FactoryContext, topic: str) -> None:
    """The agent's loop, pass after pass, until it has emitted an event to `topic`."""
    deadline = time.monotonic() + 60
    while not outbox(engine, topic):
        asyncio.run(drive_runs_once(engine, backend, context))
        assert time.monotonic() < deadline, f"nothing reached {topic}"
        time.sleep(0.2)


@pytest.mark.slurm
def test_a_placed_run_runs_as_a_slurm_job_and_its_usage_is_slurms_accounting(
    cluster: tuple[LocalSlurm, SlurmCluster, Path], tmp_path: Path
) -> None:
    """The factory agent's loop on a Slurm backend: jobs.placed becomes a Slurm job under the tenant's
    account at the request's priority class; jobs.started, each usage interval and jobs.completed follow,
    and the GPU-seconds reported are sacct's elapsed seconds times its gres/gpu."""
    local, commands, _ = cluster
    engine, context, backend = slurm_site(commands, tmp_path)
    job_id = uuid.uuid4()
    placed = placed_at_haenam(job_id, gpu_count=2, expected_hours=3.0, priority="high")
    with unit_of_work(engine) as session:
        on_job_placed(context, session, placed)
    deadline = time.monotonic() + 60
    while not outbox(engine, "jobs.completed"):
        asyncio.run(drive_runs_once(engine, backend, context))
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.2)
    [completed] = [
        JobCompletedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.completed")
    ]
    usage = [UsageReportedEvent.model_validate_json(r.payload).data for r in outbox(engine, "usage.reported")]
    assert len(outbox(engine, "jobs.started")) == 1
    [slurm_job] = local.command(
        "sacct", "-n", "-X", "-P", "--name", f"sov-{job_id}-1", "-S", "2000-01-01", "-o", "JobID,QOS,Account"
    ).split()
    slurm_id, qos, account = slurm_job.split("|")
    assert (qos, account) == ("high", "mois")
    accounted = asyncio.run(commands.jobs([slurm_id]))[slurm_id]
    assert accounted.gpus == 2 and accounted.elapsed_seconds >= 3
    assert completed.status == "succeeded" and completed.usage_reports == len(usage)
    assert sum(u.gpu_seconds for u in usage) == completed.gpu_seconds == accounted.elapsed_seconds * 2
    assert [u.seq for u in usage] == list(range(1, len(usage) + 1))


@pytest.mark.slurm
def test_a_run_cancelled_while_it_runs_on_slurm_is_billed_for_what_it_used(
    cluster: tuple[LocalSlurm, SlurmCluster, Path], tmp_path: Path
) -> None:
    _, commands, _ = cluster
    engine, context, backend = slurm_site(commands, tmp_path)
    job_id = uuid.uuid4()
    with unit_of_work(engine) as session:
        on_job_placed(context, session, placed_at_haenam(job_id, gpu_count=1, expected_hours=60.0))
    drive_until(engine, backend, context, "jobs.started")
    cancel = JobCancelled(job_id=job_id, tenant_id="mois", stage="placed", site_id="nacc-haenam")
    with unit_of_work(engine) as session:
        on_job_cancelled(
            context,
            session,
            JobCancelledEvent.create(source="service/placement", subject="mois", data=cancel),
        )
    drive_until(engine, backend, context, "jobs.completed")
    [completed] = [
        JobCompletedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.completed")
    ]
    usage = [UsageReportedEvent.model_validate_json(r.payload).data for r in outbox(engine, "usage.reported")]
    assert completed.status == "cancelled" and completed.usage_reports == len(usage)
    slurm_id = asyncio.run(commands.find(f"{job_id}/1"))
    assert slurm_id is not None
    accounted = asyncio.run(commands.jobs([slurm_id]))[slurm_id]
    assert accounted.state is SlurmState.CANCELLED
    assert sum(u.gpu_seconds for u in usage) == accounted.elapsed_seconds * 1


@pytest.mark.slurm
def test_a_deadline_slurm_cannot_meet_fails_the_run_and_a_refused_one_blocks_no_other(
    cluster: tuple[LocalSlurm, SlurmCluster, Path], tmp_path: Path
) -> None:
    """Slurm's own --deadline: a run that cannot end before it is ended DEADLINE by Slurm; one whose deadline
    has passed is refused by sbatch. Both end failed with Slurm's reason, and a run placed after them at the
    same site still runs."""
    _, commands, _ = cluster
    engine, context, backend = slurm_site(commands, tmp_path)
    too_close, passed, fine = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    with unit_of_work(engine) as session:
        # 300 expected hours run for 300 s here: no start can end within 20 s.
        for job_id, hours, deadline in (
            (too_close, 300.0, now + timedelta(seconds=20)),
            (passed, 1.0, now - timedelta(minutes=5)),
            (fine, 1.0, now + timedelta(days=1)),
        ):
            placed = placed_at_haenam(job_id, gpu_count=1, expected_hours=hours, deadline=deadline)
            on_job_placed(context, session, placed)
    give_up = time.monotonic() + 90
    while len(outbox(engine, "jobs.completed")) < 3:
        asyncio.run(drive_runs_once(engine, backend, context))
        assert time.monotonic() < give_up, "the runs never ended"
        time.sleep(0.2)
    ended = {
        event.job_id: event
        for event in (
            JobCompletedEvent.model_validate_json(r.payload).data for r in outbox(engine, "jobs.completed")
        )
    }
    assert ended[fine].status == "succeeded" and ended[fine].reason is None
    assert ended[too_close].status == "failed" and "DEADLINE" in (ended[too_close].reason or "")
    assert ended[passed].status == "failed"
    assert (ended[passed].reason or "").startswith("Slurm refused the job: ")
    assert ended[passed].usage_reports == ended[too_close].usage_reports == 0


@pytest.mark.slurm
def test_an_agent_that_died_after_sbatch_and_mid_run_submits_nothing_twice_and_reports_once(
    cluster: tuple[LocalSlurm, SlurmCluster, Path], tmp_path: Path
) -> None:
    """The crash windows of a -9: after sbatch but before the Slurm job was recorded, and mid-run. A fresh
    agent (new backend, same database) finds the job by its name and reports the run exactly once."""
    local, commands, _ = cluster
    engine, context, backend = slurm_site(commands, tmp_path)
    job_id = uuid.uuid4()
    with unit_of_work(engine) as session:
        on_job_placed(context, session, placed_at_haenam(job_id, gpu_count=1, expected_hours=4.0))
    with unit_of_work(engine) as session:
        [run] = active_runs(session, context.offers)
    submitted = asyncio.run(backend.submit(run))  # ... and the agent died before recording it
    assert submitted is not None
    # Restarted: nothing of the old agent is left but its database.
    engine, context, backend = slurm_site(commands, tmp_path)
    drive_until(engine, backend, context, "jobs.started")
    engine, context, backend = slurm_site(commands, tmp_path)  # and again, mid-run
    drive_until(engine, backend, context, "jobs.completed")
    for _ in range(3):  # passes after the end change nothing
        asyncio.run(drive_runs_once(engine, backend, context))
    name = f"sov-{job_id}-1"
    jobs = local.command("sacct", "-n", "-X", "-P", "--name", name, "-S", "2000-01-01", "-o", "JobID").split()
    assert jobs == [submitted]
    usage = [UsageReportedEvent.model_validate_json(r.payload).data for r in outbox(engine, "usage.reported")]
    assert len({(u.seq, u.attempt) for u in usage}) == len(usage)
    assert len(outbox(engine, "jobs.started")) == len(outbox(engine, "jobs.completed")) == 1
    accounted = asyncio.run(commands.jobs(jobs))[submitted]
    assert sum(u.gpu_seconds for u in usage) == accounted.elapsed_seconds


def test_every_priority_class_has_its_qos() -> None:
    assert set(QOS_PRIORITIES) == set(get_args(JobRequest.model_fields["priority"].annotation))


def job_of(state: SlurmState, elapsed: int, gpus: int = 3) -> SlurmJob:
    start = None if state is SlurmState.PENDING else datetime(2027, 1, 1, tzinfo=UTC)
    return SlurmJob("1", "sov-x", state, start, None, elapsed, gpus, "0:0", "None")


@given(
    interval=st.integers(1, 7200),
    whole=st.integers(0, 300),
    part=st.floats(0, 1, exclude_max=True),
    later=st.integers(0, 20_000),
    gpus=st.integers(1, 1_000_000),
)
def test_intervals_reported_while_running_are_a_prefix_of_the_final_ones_and_add_up(
    interval: int, whole: int, part: float, later: int, gpus: int
) -> None:
    """However long a run and whenever it is looked at while running, what was reported then stays as it
    was, and the intervals once it ended add up to Slurm's elapsed seconds times its GPUs."""
    elapsed = whole * interval + int(part * interval)
    running = accounted_intervals(job_of(SlurmState.RUNNING, elapsed, gpus), interval, 0.7, 1.3)
    final = accounted_intervals(job_of(SlurmState.COMPLETED, elapsed + later, gpus), interval, 0.7, 1.3)
    assert final[: len(running)] == running
    assert sum(i.gpu_seconds for i in final) == (elapsed + later) * gpus
    assert [i.seq for i in final] == list(range(1, len(final) + 1))
    assert all(a.end_offset_s == b.start_offset_s for a, b in pairwise(final))
    assert all(i.end_offset_s > i.start_offset_s for i in final)


def slurm_settings(sites: str, **fields: Any) -> tuple[Settings, FactoryContext]:
    complete: dict[str, Any] = {
        "factory_backend": "slurm",
        "slurm_partitions": {"nacc-haenam-b200": "b200", "skt-pangyo-h100": "h100"},
        "slurm_launch_scripts": dict.fromkeys((kind.value for kind in JobKind), LAUNCH_SCRIPT),
    }
    settings = replace(Settings(), **(complete | fields))
    offers = {o.site.site_id: o for o in CATALOGUE.offers if o.site.site_id in sites.split(",")}
    return settings, FactoryContext(offers=offers)


@pytest.mark.parametrize(
    ("sites", "fields", "refused"),
    [
        ("nacc-haenam", {"factory_backend": "kubernetes"}, "SOVEREIGN_FACTORY_BACKEND is 'kubernetes'"),
        ("nacc-haenam,gov-pool-nhn", {}, "no partition for pools gov-pool-nhn-h200"),
        ("nacc-haenam", {"slurm_launch_scripts": {}}, "SOVEREIGN_SLURM_LAUNCH_SCRIPTS has no script for"),
        # Slurm accounts GPU time: a pool priced per token would bill its inference at nothing.
        ("skt-pangyo", {}, "pools skt-pangyo-h100 are priced per token"),
    ],
)
def test_a_slurm_site_the_agent_cannot_serve_truthfully_stops_it_at_start_saying_why(
    sites: str, fields: dict[str, Any], refused: str
) -> None:
    settings, context = slurm_settings(sites, **fields)
    with pytest.raises(ValueError, match=re.escape(refused)):
        build_backend(settings, context)


def test_a_slurm_site_whose_pools_all_have_partitions_and_scripts_gets_the_slurm_backend() -> None:
    assert isinstance(build_backend(*slurm_settings("nacc-haenam")), SlurmBackend)


@given(
    interval=st.integers(1, 7200),
    elapsed=st.integers(1, 20_000),
    seen_at=st.floats(0, 1),
    gpus=st.integers(1, 4096),
    joules=st.integers(0, 10**13),
)
def test_energy_slurm_measured_is_what_the_intervals_add_up_to_once_the_job_ended(
    interval: int, elapsed: int, seen_at: float, gpus: int, joules: int
) -> None:
    """A cluster with an energy plugin: the intervals reported while the job ran keep the site's power
    model, and the last one makes the total Slurm's measurement times the PUE (when it is not less than
    what was reported already); a cluster without one (0) keeps the power model throughout."""
    pue = 1.3
    running = accounted_intervals(
        job_of(SlurmState.RUNNING, int(elapsed * seen_at), gpus), interval, 0.7, pue
    )
    ended = replace(job_of(SlurmState.COMPLETED, elapsed, gpus), energy_joules=joules)
    final = accounted_intervals(ended, interval, 0.7, pue)
    modelled = accounted_intervals(replace(ended, energy_joules=0), interval, 0.7, pue)
    assert final[: len(running)] == running == modelled[: len(running)]
    measured = round(joules * pue / 3600)
    reported_before = sum(i.energy_wh for i in final[:-1])
    if joules == 0:
        assert final == modelled
    else:
        assert final[:-1] == modelled[:-1]
        assert sum(i.energy_wh for i in final) == max(measured, reported_before)


def test_sacct_lines_are_read_with_the_energy_slurm_measured_or_none() -> None:
    fields = "7|sov-j-1|COMPLETED|2027-01-01T09:00:00|2027-01-01T09:00:10|10|cpu=1,gres/gpu=2|0:0|None"
    measured, unmeasured = _parse_sacct_line(fields + "|72000"), _parse_sacct_line(fields + "|")
    assert measured is not None and unmeasured is not None
    assert (measured.energy_joules, unmeasured.energy_joules, measured.gpus) == (72000, 0, 2)
    assert _parse_sacct_line(fields) is None  # a line of other fields is not read as a job
