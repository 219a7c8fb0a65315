"""Where set-up installed Apache Kafka and the OPA server: scripts/setup-production-stack.sh installs them
into its cache (once) and says where, so the paths are written in that script alone."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.shared.settings import REPO_ROOT

SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-production-stack.sh"


@dataclass(frozen=True)
class Installation:
    kafka_home: Path  # laid out like the image's /opt/kafka: bin/ and libs/
    opa_bin: Path


@functools.cache
def installation() -> Installation:
    """Runs set-up (quick once its cache is warm) and reads the paths it prints."""
    result = subprocess.run([SETUP_SCRIPT], check=True, capture_output=True, text=True)
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Installation(kafka_home=Path(paths["KAFKA_HOME"]), opa_bin=Path(paths["OPA_BIN"]))
