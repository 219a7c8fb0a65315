"""The OPA server as compose runs it (`opa run --server` over policies/), as a process on a free loopback
port, from the binary set-up builds from OPA's Go module."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.shared.embedded_broker import free_loopback_port, terminate
from services.shared.settings import REPO_ROOT
from sovereign.stack.installation import installation


class LocalOpa:
    def __init__(self, policy_dir: Path = REPO_ROOT / "policies", log_path: Path | None = None) -> None:
        self.policy_dir = policy_dir
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        log = self._log_path.open("ab") if self._log_path else None
        self._process = subprocess.Popen(
            [
                str(installation().opa_bin),
                "run",
                "--server",
                f"--addr=127.0.0.1:{self.port}",
                "--log-level=error",
                str(self.policy_dir),
            ],
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        if log:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the OPA server did not become healthy at {self.url}")
            time.sleep(0.1)
        return self.url

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing (a hang)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, within=10)
