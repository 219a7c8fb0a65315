"""`sovereign broker`: the embedded Tansu broker in the foreground, with every topic created."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.shared.embedded_broker import CLIENT_ENV, EmbeddedBroker
from services.shared.kafka import all_topics, ensure_topics
from services.shared.settings import REPO_ROOT

# Settings a service reads from its environment: one left in the caller's shell must not leak into a run.
SERVICE_SETTING_PREFIXES = ("SOVEREIGN_", "KAFKA_", "DATABASE_", "OPA_")


def embedded_service_env(bootstrap_servers: str, data_dir: Path, **variables: str) -> dict[str, str]:
    """The environment of a service on the embedded broker: the caller's, without its service settings,
    then the broker, the data directory and the given variables."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_SETTING_PREFIXES)}
    return {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        **CLIENT_ENV,
        "SOVEREIGN_DATA_DIR": str(data_dir),
        **variables,
    }


def start_service(name: str, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`sovereign run NAME` as a process of its own, its output in log_path."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sovereign", "run", name],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


def serve_embedded_broker(port: int | None, partitions: int, tenant_ids: Iterable[str]) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with EmbeddedBroker(port) as broker:
        asyncio.run(ensure_topics(broker.bootstrap_servers, all_topics(tenant_ids), partitions))
        print(broker.bootstrap_servers, flush=True)
        print(
            f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers} KAFKA_IDEMPOTENT_PRODUCER=false",
            flush=True,
        )
        stop.wait()
    return 0
