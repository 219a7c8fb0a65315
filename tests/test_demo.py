"""The README's main job, `sovereign demo`, as a newcomer runs it: the whole marketplace on the embedded
defaults as separate processes, ending with its checks and exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.shared.settings import REPO_ROOT

pytestmark = pytest.mark.broker


def test_the_demo_completes_with_every_check_passing() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "sovereign", "demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = demo.stdout
    assert demo.returncode == 0, report[-4000:] + demo.stderr[-2000:]
    assert "Demo completed" in report
    assert (
        "The forged request, refused to hanbit-ai: key 'hanbit-ai-demo' (hanbit-ai) does not speak" in report
    )
    checks = [line.strip() for line in report.splitlines() if line.startswith(("  ok ", "  FAIL "))]
    assert len(checks) == 6 and all(check.startswith("ok") for check in checks), checks
