"""The README's main job, `sovereign demo`, as a newcomer runs it: the whole marketplace on the embedded
defaults as separate processes, ending with its checks and exit status."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from services.shared.settings import REPO_ROOT
from sovereign.slurm_demo import SLURM_SITE, BilledRun, slurm_accounting_report
from sovereign.stack.slurm import not_installed

pytestmark = pytest.mark.broker


def completed_demo(*options: str) -> tuple[str, list[str]]:
    """`sovereign demo` as a newcomer runs it, which must complete: its report, and its checks' lines."""
    demo = subprocess.run(
        [sys.executable, "-m", "sovereign", "demo", *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = demo.stdout
    assert demo.returncode == 0, report[-4000:] + demo.stderr[-2000:]
    assert "Demo completed" in report
    return report, [line.strip() for line in report.splitlines() if line.startswith(("  ok ", "  FAIL "))]


def test_the_demo_completes_with_every_check_passing() -> None:
    report, checks = completed_demo()
    assert (
        "The forged request, refused to hanbit-ai: key 'hanbit-ai-demo' (hanbit-ai) does not speak" in report
    )
    assert len(checks) == 6 and all(check.startswith("ok") for check in checks), checks


@pytest.mark.slurm
def test_the_demo_runs_a_sites_jobs_on_slurm_and_bills_what_slurm_accounted() -> None:
    if missing := not_installed():
        pytest.skip(missing)
    report, checks = completed_demo("--slurm")
    assert len(checks) == 7 and all(check.startswith("ok") for check in checks), checks
    assert re.search(rf"ok  the [1-9]\d* runs at {SLURM_SITE} were billed what Slurm accounted", report)


def run(job: str, gpu_seconds: int, amount: int, billed: bool = True) -> BilledRun:
    return BilledRun(job, 1, gpu_seconds, amount, 2100, billed)


def test_the_slurm_check_fails_a_bill_that_is_not_sacct_and_a_slurm_job_with_no_bill() -> None:
    jobs, accounted = {"a/1": "1", "b/1": "2"}, {"1": 3600, "2": 10}
    report, exact = slurm_accounting_report([run("a", 3600, 2100), run("b", 10, 6)], jobs, accounted)
    assert exact, report
    for runs, flagged in [
        ([run("a", 3600, 2100), run("b", 9, 5)], "billed otherwise: b/1"),  # a second short
        ([run("a", 3600, 2101), run("b", 10, 6)], "billed otherwise: a/1"),  # not at the locked price
        ([run("a", 3600, 2100), run("b", 10, 6, billed=False)], "billed otherwise: b/1"),
        ([run("a", 3600, 2100)], "Slurm jobs with no bill: 2"),
        ([], "no run went there"),
    ]:
        report, exact = slurm_accounting_report(runs, jobs, accounted if runs else {})
        assert not exact and flagged in report, report
    # A run submitted twice: the second Slurm job is no run's, and is not billed.
    report, exact = slurm_accounting_report([run("a", 3600, 2100)], {"a/1": "1"}, {"1": 3600, "3": 3600})
    assert not exact and "Slurm jobs with no bill: 3" in report
