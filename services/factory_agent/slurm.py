"""An AI factory's Slurm cluster, through Slurm's own commands: sbatch, sacct, scancel, sinfo, sacctmgr.

Commands rather than slurmrestd: slurmrestd refuses to run as root and needs JWT over TCP (a key to
provision and rotate), while the commands need only munge and SLURM_CONF, read the same in every version
since 20.11, and cost 10 to 20 ms a call, which a poll every few seconds of a site's active jobs affords.
Each marketplace run is one Slurm job named after it (`job_name`), so the two can always be matched: a
restarted adapter finds the job it submitted before it could record it, and never submits twice.

Usage comes from Slurm's accounting (slurmdbd): a run's GPU-seconds are its elapsed seconds times its
allocated `gres/gpu`, cut into intervals of `interval_seconds` from its start, the last ending at its end.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Literal

from services.factory_agent.simulation import UsageInterval, energy_wh
from services.shared.commands import output_within

COMMAND_TIMEOUT_SECONDS = 30.0
JOB_NAME_PREFIX = "sov-"
# Each priority class of a request is a Slurm QOS of that name, with this priority (PriorityWeightQOS).
QOS_PRIORITIES = {"low": 0, "normal": 10, "high": 100, "urgent": 1000}
# Fields read from sacct, in this order ('|' separated with -P).
_SACCT_FIELDS = "JobID,JobName,State,Start,End,ElapsedRaw,AllocTRES,ExitCode,Reason,ConsumedEnergyRaw"
_ALLOCATED_GPUS = re.compile(r"(?:^|,)gres/gpu=(\d+)")
# Node states in which a node's GPUs can take jobs (sinfo's %T, less any '*' or '~' suffix).
_USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing", "reserved", "planned"}


class SlurmError(RuntimeError):
    """A Slurm command failed: its arguments, exit code and what it wrote to stderr."""


class SlurmRefused(SlurmError):
    """sbatch refused the job itself (its time limit, deadline or account): asking again is of no use. The
    message is Slurm's reason alone."""


# How sbatch says it refused a job, and how it says it could not ask (then it is asked again later).
_REFUSED = "Batch job submission failed: "
_UNREACHABLE = "Unable to contact slurm controller"


class SlurmState(StrEnum):
    """Slurm's job states, as sacct writes them (its first word: "CANCELLED by 0" is CANCELLED)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"


# How each state that ends a job ends the marketplace's run; a failed run is retried elsewhere.
RUN_END: dict[SlurmState, Literal["succeeded", "failed", "cancelled"]] = {
    SlurmState.COMPLETED: "succeeded",
    SlurmState.CANCELLED: "cancelled",
    SlurmState.FAILED: "failed",
    SlurmState.TIMEOUT: "failed",
    SlurmState.NODE_FAIL: "failed",
    SlurmState.OUT_OF_MEMORY: "failed",
    SlurmState.PREEMPTED: "failed",
    SlurmState.BOOT_FAIL: "failed",
    SlurmState.DEADLINE: "failed",
}
STARTED_STATES = {SlurmState.RUNNING, SlurmState.SUSPENDED, SlurmState.COMPLETING, *RUN_END}


def job_name(run_id: str) -> str:
    """The Slurm job name of a marketplace run (`job_id/attempt`)."""
    return JOB_NAME_PREFIX + run_id.replace("/", "-")


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm's accounting has it."""

    job_id: str
    name: str
    state: SlurmState
    start: datetime | None
    end: datetime | None
    elapsed_seconds: int
    gpus: int
    exit_code: str
    reason: str
    # What an energy-accounting plugin (acct_gather_energy: GPUs, IPMI, RAPL) measured, once the job ended;
    # 0 where the cluster has none.
    energy_joules: int = 0

    @property
    def started(self) -> bool:
        # A job cancelled while pending has a start (the time of its cancel) but never held an allocation:
        # every marketplace run holds GPUs once it has started.
        return self.state in STARTED_STATES and self.start is not None and self.gpus > 0

    @property
    def ended(self) -> bool:
        return self.state in RUN_END

    def why_it_ended(self) -> str:
        """What Slurm says of a job that did not succeed: its state, exit code and reason."""
        reason = "" if self.reason in {"", "None"} else f", {self.reason}"
        return f"Slurm job {self.job_id} ended {self.state.value} (exit code {self.exit_code}{reason})"


@dataclass(frozen=True)
class Submission:
    """What a placed run asks of Slurm."""

    run_id: str
    job_id: str
    tenant_id: str
    kind: str
    partition: str
    gpu_count: int
    priority: str
    time_limit_minutes: int
    deadline: datetime | None
    run_seconds: int
    launch_script: Path


def accounted_intervals(
    job: SlurmJob, interval_seconds: int, power_kw_per_gpu: float, pue: float
) -> list[UsageInterval]:
    """The usage intervals of a started job that have closed: whole `interval_seconds` from its start while
    it runs, and once it has ended the last one too, ending at its end. Their GPU-seconds add up to the
    elapsed seconds times the allocated GPUs, as Slurm accounts them. Energy is the site's power model,
    unless Slurm measured the ended job's: then the last interval takes what the measurement (times the
    site's PUE) leaves after the intervals reported while it ran, so that they add up to it."""
    if not job.started:
        return []
    # A running job's elapsed time is sacct's clock less its start; a second is kept back so that its end,
    # stamped by slurmctld, can never fall inside an interval already reported.
    running = max(0, job.elapsed_seconds - 1) // interval_seconds * interval_seconds
    closed = job.elapsed_seconds if job.ended else running
    bounds = [*range(0, closed, interval_seconds), closed]
    intervals = [
        UsageInterval(
            seq=index + 1,
            start_offset_s=start,
            end_offset_s=end,
            gpu_seconds=(end - start) * job.gpus,
            energy_wh=energy_wh((end - start) * job.gpus, power_kw_per_gpu, pue),
            input_tokens=0,
            output_tokens=0,
        )
        for index, (start, end) in enumerate(pairwise(bounds))
    ]
    if job.ended and job.energy_joules > 0 and intervals:
        measured_wh = round(job.energy_joules * pue / 3600)
        before = sum(interval.energy_wh for interval in intervals[:-1])
        intervals[-1] = replace(intervals[-1], energy_wh=max(0, measured_wh - before))
    return intervals


class SlurmCluster:
    """The commands of one cluster, reached through the SLURM_CONF in `env`; jobs are submitted as the user
    the adapter runs as, charged to the tenant's account."""

    def __init__(self, env: Mapping[str, str], user: str | None = None) -> None:
        self._env = {**os.environ, **env}
        self._user = user or os.environ.get("USER") or "root"
        self._qos_ready = False  # a fresh cluster has none of the priority classes' QOS

    async def run(self, *arguments: str) -> str:
        process = await asyncio.create_subprocess_exec(
            *arguments,
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        finished = await output_within(process, COMMAND_TIMEOUT_SECONDS)
        if finished is None:
            raise SlurmError(f"{' '.join(arguments)} did not answer within {COMMAND_TIMEOUT_SECONDS:.0f} s")
        out, err = finished
        if process.returncode != 0:
            raise SlurmError(
                f"{' '.join(arguments)} failed ({process.returncode}): {err.decode(errors='replace').strip()}"
            )
        return out.decode(errors="replace")

    async def ensure_qos(self) -> None:
        """A QOS for each priority class, with its priority."""
        existing = set((await self.run("sacctmgr", "-n", "-P", "show", "qos", "format=Name")).split())
        for name, priority in QOS_PRIORITIES.items():
            verb = "modify" if name in existing else "add"
            where = ["where", f"name={name}", "set"] if name in existing else [name]
            await self.run("sacctmgr", "-i", verb, "qos", *where, f"priority={priority}")

    async def ensure_account(self, tenant_id: str) -> None:
        """The tenant's Slurm account, with the adapter's user in it allowed every priority class."""
        shown = await self.run(
            "sacctmgr",
            "-n",
            "-P",
            "show",
            "assoc",
            f"account={tenant_id}",
            f"user={self._user}",
            "format=Account",
        )
        if tenant_id in shown.split():
            return
        await self.run("sacctmgr", "-i", "add", "account", tenant_id)
        await self.run(
            "sacctmgr",
            "-i",
            "add",
            "user",
            self._user,
            f"account={tenant_id}",
            f"qos={','.join(QOS_PRIORITIES)}",
        )

    async def find(self, run_id: str) -> str | None:
        """The Slurm job of a run, if one was submitted: in slurmctld's memory (squeue of every state, which
        keeps an ended job for MinJobAge), else in the accounting (sacct). sacct alone missed a job in the
        second it ended (once in three, measured on a loaded machine), and a run was submitted twice."""
        name = job_name(run_id)
        known = (await self.run("squeue", "-h", "-t", "all", "-n", name, "-o", "%i")).split()
        if known:
            return known[0]
        accounted = await self.run(
            "sacct", "-n", "-X", "-P", "--name", name, "-S", "2000-01-01", "-E", "now+1days", "-o", "JobID"
        )
        ids = accounted.split()
        return ids[0] if ids else None

    async def submit(self, submission: Submission) -> str:
        """The run's Slurm job: the one already submitted for it, else a new one."""
        found = await self.find(submission.run_id)
        if found is not None:
            return found
        if not self._qos_ready:
            await self.ensure_qos()
            self._qos_ready = True
        await self.ensure_account(submission.tenant_id)
        arguments = [
            "sbatch",
            "--parsable",
            f"--job-name={job_name(submission.run_id)}",
            f"--comment=marketplace job {submission.job_id}",
            f"--account={submission.tenant_id}",
            f"--partition={submission.partition}",
            f"--qos={submission.priority}",
            f"--gres=gpu:{submission.gpu_count}",
            f"--time={submission.time_limit_minutes}",
            "--no-requeue",  # a failed run is the marketplace's to retry, elsewhere
            "--output=/dev/null",
            "--export=ALL,"
            + ",".join(
                f"{name}={value}"
                for name, value in {
                    "SOVEREIGN_JOB_ID": submission.job_id,
                    "SOVEREIGN_RUN_ID": submission.run_id,
                    "SOVEREIGN_TENANT_ID": submission.tenant_id,
                    "SOVEREIGN_JOB_KIND": submission.kind,
                    "SOVEREIGN_RUN_SECONDS": submission.run_seconds,
                }.items()
            ),
        ]
        if submission.deadline is not None:
            # Slurm reads the deadline in the cluster's local time.
            arguments.append(f"--deadline={submission.deadline.astimezone().strftime('%Y-%m-%dT%H:%M:%S')}")
        try:
            output = await self.run(*arguments, str(submission.launch_script))
        except SlurmError as error:
            message = str(error)
            if _REFUSED in message and _UNREACHABLE not in message:
                raise SlurmRefused(f"Slurm refused the job: {message.split(_REFUSED, 1)[1]}") from error
            raise
        return output.strip().split(";")[0]

    async def jobs(self, job_ids: Sequence[str]) -> dict[str, SlurmJob]:
        """The accounting of these jobs; one just submitted may not be accounted yet (then it is absent)."""
        if not job_ids:
            return {}
        output = await self.run("sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", _SACCT_FIELDS)
        return {job.job_id: job for line in output.splitlines() if (job := _parse_sacct_line(line))}

    async def cancel(self, job_id: str) -> None:
        await self.run("scancel", job_id)

    async def gpus_by_partition(self) -> dict[str, int]:
        """Each partition's GPUs on nodes that can take jobs now (a drained or down node's are not)."""
        output = await self.run("sinfo", "-h", "-N", "-o", "%P|%T|%G")
        gpus: dict[str, int] = {}
        for line in output.splitlines():
            partition, state, gres = line.split("|")
            partition = partition.rstrip("*")
            count = sum(int(match) for match in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
            usable = state.rstrip("*~#!%$@^-") in _USABLE_NODE_STATES
            gpus[partition] = gpus.get(partition, 0) + (count if usable else 0)
        return gpus


def _parse_sacct_line(line: str) -> SlurmJob | None:
    fields = line.split("|")
    if len(fields) != len(_SACCT_FIELDS.split(",")):
        return None
    job_id, name, state, start, end, elapsed, tres, exit_code, reason, energy = fields
    try:
        slurm_state = SlurmState(state.split()[0])
    except (ValueError, IndexError):
        return None
    return SlurmJob(
        job_id=job_id,
        name=name,
        state=slurm_state,
        start=_sacct_time(start),
        end=_sacct_time(end),
        elapsed_seconds=int(elapsed) if elapsed.isdigit() else 0,
        gpus=allocated_gpus(tres),
        exit_code=exit_code,
        reason=reason,
        energy_joules=int(energy) if energy.isdigit() else 0,
    )


def allocated_gpus(tres: str) -> int:
    """The GPUs in sacct's AllocTRES (`cpu=1,gres/gpu=2,...`): 0 when none was allocated."""
    gpus = _ALLOCATED_GPUS.search(tres)
    return int(gpus.group(1)) if gpus else 0


def _sacct_time(text: str) -> datetime | None:
    """sacct's times are the cluster's local time, without an offset; "Unknown" or "None" when unset."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None
