"""The demo's Slurm mode (`sovereign demo --slurm`): one site's factory runs its jobs on a local Slurm cluster
with accounting, and the demo shows each run's Slurm job beside its bill."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlmodel import Session, col, select

from services.billing.storage import ChargeRow
from services.factory_agent.storage import RunRow, run_key
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import charge_krw
from services.shared.settings import REPO_ROOT
from sovereign.stack.slurm import LocalSlurm

# The site most of the demo's jobs go to (its A100 pool of 640 GPUs, on one node here).
SLURM_SITE = "nadc-gwangju"


@contextmanager
def slurm_cluster_for(site_id: str) -> Iterator[LocalSlurm]:
    offer = load_catalogue(REPO_ROOT / "catalogue").site_offer(site_id)
    assert offer is not None, site_id
    cluster = LocalSlurm.for_site(offer)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class BilledRun:
    job_id: str
    attempt: int
    gpu_seconds: int
    amount_krw: int
    price_krw_per_gpu_hour: int | None
    billed: bool


def charges_at(site_id: str, session: Session) -> list[BilledRun]:
    """What billing charged for each run at the site."""
    return [
        BilledRun(
            c.job_id, c.attempt, c.rated_gpu_seconds, c.rated_amount_krw, c.price_krw_per_gpu_hour, c.billed
        )
        for c in session.exec(
            select(ChargeRow).where(ChargeRow.site_id == site_id).order_by(col(ChargeRow.job_id))
        )
    ]


def slurm_jobs(session: Session) -> dict[str, str]:
    """The Slurm job of each run the agents handed to a backend that names one, by run id."""
    return {
        run.run_id: run.backend_ref for run in session.exec(select(RunRow)) if run.backend_ref is not None
    }


def slurm_accounting_report(
    runs: Sequence[BilledRun], jobs: Mapping[str, str], accounted: Mapping[str, int]
) -> tuple[str, bool]:
    """Each run beside its Slurm job's accounting (a run cancelled before it was submitted has none, and
    used nothing), and whether every bill is exactly sacct's GPU-seconds at the locked price with no Slurm
    job left unbilled. `jobs`: each run's Slurm job id; `accounted`: each Slurm job's GPU-seconds."""
    lines = [
        "  Each run was one Slurm job. It ran its expected hours at the demo's time scale, and Slurm",
        "  accounts real seconds: the bill is for the seconds its GPUs actually ran.",
        f"  {'run (job id/attempt)':<40} {'Slurm job':>9} {'sacct GPU-s':>11} {'billed GPU-s':>12} KRW",
    ]
    wrong: list[str] = []
    billed: set[str] = set()
    for run in runs:
        run_id = run_key(run.job_id, run.attempt)
        slurm_job = jobs.get(run_id)
        if slurm_job is not None:
            billed.add(slurm_job)
        used = accounted.get(slurm_job or "", 0)  # none: cancelled before it was submitted
        expected = charge_krw(used, run.price_krw_per_gpu_hour or 0)
        if not run.billed or (run.gpu_seconds, run.amount_krw) != (used, expected):
            wrong.append(run_id)
        shown = slurm_job or "-"
        lines.append(f"  {run_id:<40} {shown:>9} {used:>11,} {run.gpu_seconds:>12,} {run.amount_krw:>6,}")
    unbilled = sorted(set(accounted) - billed, key=int)
    exact = bool(runs) and not wrong and not unbilled
    total = sum(accounted.values())
    verdict = (
        f"  {'ok ' if exact else 'FAIL'} the {len(runs)} runs at {SLURM_SITE} were billed what Slurm "
        f"accounted ({total:,} GPU-seconds by sacct) at the prices locked at placement"
    )
    if wrong:
        verdict += f"; billed otherwise: {', '.join(wrong)}"
    if unbilled:
        verdict += f"; Slurm jobs with no bill: {', '.join(unbilled)}"
    if not runs:
        verdict += "; no run went there"
    return "\n".join([*lines, verdict]), exact
