"""`scripts/production-check.sh`: the production configuration booted as processes, as compose.yaml gives
it. PostgreSQL, Apache Kafka over SASL_SSL with the ACLs (deploy/kafka/start.sh, then kafka-init), the
OPA server and the four services (placement twice, as its replicas say), each with the environment compose
gives it; container paths and host names are mapped onto this machine from compose's own volumes and
secrets. It waits for every health check compose declares, submits signed requests from two tenants as
their own principals, settles, checks the invariants and the ACL refusals, prints one line per check,
stops everything it started and exits non-zero on any failure."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError

from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.signing import KeyRole, Signer, make_key
from services.shared.kafka import transport_security
from services.shared.settings import REPO_ROOT, Settings
from sovereign.stack.installation import installation
from sovereign.stack.kafka import ADMIN, LocalKafka, probe_read, probe_write
from sovereign.stack.opa import LocalOpa
from sovereign.stack.postgres import LocalPostgres
from sovereign.status import collect_status
from sovereign.verification.history import collect_history
from sovereign.verification.invariants import check
from sovereign.verification.watch import produce
from sovereign.verification.workload import generate, request_events

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
# The two tenants whose signed requests the check submits.
TENANTS = ("mois", "hanbit-ai")
JOBS = 12


@dataclass
class Stack:
    """What the check started, and how compose's container paths and hosts map onto this machine."""

    root: Path
    postgres: LocalPostgres
    kafka: LocalKafka
    opa: LocalOpa
    keys: Path
    signers: dict[str, Signer] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def translation(self) -> dict[str, str]:
        """Compose's names (hosts, mounted paths) -> this machine's, longest first when applied."""
        return {
            "postgresql://sovereign:sovereign@postgres:5432/sovereign": self.postgres.url,
            "kafka:9092": self.kafka.bootstrap_servers,
            "http://opa:8181": self.opa.url,
            "/run/secrets": str(self.kafka.secrets_dir),
            "/secrets/tls": str(self.kafka.tls_dir),
            "/keys": str(self.keys),
            "/deploy": str(REPO_ROOT / "deploy"),
            "/opt/kafka": str(installation().kafka_home),
            "/tmp/admin.properties": str(self.kafka.config_dir / "admin.properties"),
        }

    def local(self, value: str) -> str:
        """One pass, longest name first, so that no replacement is itself rewritten."""
        translation = self.translation()
        names = sorted(translation, key=len, reverse=True)
        return re.sub("|".join(map(re.escape, names)), lambda match: translation[match.group(0)], value)

    def environment(self, spec: dict[str, Any]) -> dict[str, str]:
        """A container's environment from compose, mapped here, on top of this process's own."""
        compose_env = {name: self.local(str(value)) for name, value in spec.get("environment", {}).items()}
        return {
            **os.environ,
            **self.kafka.environment(),
            **compose_env,
            "SOVEREIGN_DATA_DIR": str(self.root / "data"),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.postgres.port),
            "PATH": f"{Path(sys.executable).parent}:{self.postgres.bin_dir}:{os.environ.get('PATH', '')}",
        }


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def app_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose_services().items() if s.get("command", [])[:2] == ["sovereign", "run"]}


def _health_command(stack: Stack, spec: dict[str, Any]) -> list[str] | None:
    test = spec.get("healthcheck", {}).get("test")
    if not test:
        return None
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["bash", "-c", stack.local(rest[0])]
    return [stack.local(part) for part in rest]


async def _wait_healthy(stack: Stack, name: str, spec: dict[str, Any], within: float = 120.0) -> str:
    command = _health_command(stack, spec)
    if command is None:
        return "no health check in compose.yaml"
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(
            subprocess.run, command, env=stack.environment(spec), capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return shlex.join(spec["healthcheck"]["test"][1:])
        if time.monotonic() > deadline:
            raise CheckFailed(f"{name}'s health check never passed: {(result.stdout + result.stderr)[-300:]}")
        await asyncio.sleep(1)


class CheckFailed(Exception):
    pass


def _start_keys(directory: Path) -> dict[str, Signer]:
    """The keys compose mounts at /keys: the factory's and the marketplace's (under the ids compose names),
    an officer's, and the two tenants'."""
    catalogue = load_catalogue(REPO_ROOT / "catalogue")
    make_key(directory, "factory", KeyRole.FACTORY, "the factories", catalogue.site_ids)
    make_key(directory, "marketplace", KeyRole.MARKETPLACE, "the marketplace")
    return {tenant: make_key(directory, f"{tenant}-check", KeyRole.TENANT, tenant) for tenant in TENANTS}


async def _settle(stack: Stack, within: float = 240.0) -> None:
    """Until the invariants hold over everything sent (every job ended, billed, nothing in flight) and every
    consumer group has caught up with every outbox empty."""
    settings = stack.kafka.settings_for(ADMIN, _reader_settings(stack))
    deadline = time.monotonic() + within
    while True:
        statuses = await collect_status(settings)
        moving = [s.service for s in statuses if any(s.lag.values()) or s.outbox_backlog]
        violations = check(await collect_history(settings))
        if not moving and not violations:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"not settled: {moving} moving; {'; '.join(map(str, violations[:3]))}")
        dead = [name for name, process in stack.processes.items() if process.poll() is not None]
        if dead:
            raise CheckFailed(f"services died: {dead}")
        await asyncio.sleep(2)


def _reader_settings(stack: Stack) -> Settings:
    return Settings(
        database_url=stack.postgres.url,
        data_dir=stack.root / "data",
        catalogue_dir=REPO_ROOT / "catalogue",
    )


async def _refused(attempt: Awaitable[None], *errors: type[BaseException]) -> None:
    try:
        await asyncio.wait_for(attempt, 30)
    except errors:
        return
    raise CheckFailed("the broker allowed it")


def _acl_checks(kafka: LocalKafka, root: Path) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    wrong = root / "wrong-password"
    wrong.write_text("not-the-password\n")
    denied = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)
    mois = kafka.settings_for("tenant-mois")
    return [
        (
            "a tenant reading another tenant's stream is refused",
            lambda: _refused(probe_read(kafka, "tenant-mois", ["tenant.nia"], "tenant.mois.check"), *denied),
        ),
        (
            "a tenant reading a shared topic is refused",
            lambda: _refused(probe_read(kafka, "tenant-mois", ["jobs.placed"], "tenant.mois.check"), *denied),
        ),
        (
            "a tenant writing capacity.offered is refused",
            lambda: _refused(probe_write(kafka, "tenant-mois", ["capacity.offered"]), *denied),
        ),
        (
            "a factory writing jobs.placed is refused",
            lambda: _refused(probe_write(kafka, "factory-agent", ["jobs.placed"]), *denied),
        ),
        (
            "a wrong password is refused",
            lambda: _refused(
                probe_write(
                    kafka, "tenant-mois", ["jobs.requested"], replace(mois, kafka_password_file=wrong)
                ),
                KafkaConnectionError,
            ),
        ),
        (
            "a client without TLS is refused",
            lambda: _refused(
                probe_write(
                    kafka,
                    "tenant-mois",
                    ["jobs.requested"],
                    replace(mois, kafka_security_protocol="PLAINTEXT"),
                ),
                KafkaConnectionError,
                asyncio.TimeoutError,
            ),
        ),
    ]


def _start_services(stack: Stack) -> None:
    """Each service's compose command with its compose environment, as many processes as its replicas."""
    for name, spec in app_services().items():
        for index in range(spec.get("deploy", {}).get("replicas", 1)):
            log = (stack.root / "logs" / f"{name}-{index}.log").open("wb")
            stack.processes[f"{name}-{index}"] = subprocess.Popen(
                [stack.local(part) for part in spec["command"]],
                env=stack.environment(spec),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
            log.close()


async def _run(stack: Stack, report: Callable[[bool, str], None]) -> None:
    services = compose_services()
    stack.postgres.start()
    postgres_health = await _wait_healthy(stack, "postgres", services["postgres"])
    report(True, f"PostgreSQL 18 at 127.0.0.1:{stack.postgres.port} ({postgres_health})")
    await asyncio.to_thread(stack.kafka.start)
    report(
        True, f"Apache Kafka 4.4 (KRaft, SASL_SSL, SCRAM-SHA-512, ACLs) at {stack.kafka.bootstrap_servers}"
    )
    health = await _wait_healthy(stack, "kafka", services["kafka"])
    report(True, f"kafka health check: {health}")
    init = await stack.kafka.init()
    report(True, f"kafka-init: {init.topics} topics, {len(init.users)} SCRAM users, {init.acls} ACLs")
    stack.opa.start()
    report(True, f"OPA server at {stack.opa.url} over policies/")
    _start_services(stack)
    for name, spec in app_services().items():
        report(
            True,
            f"{name} healthy ({spec.get('deploy', {}).get('replicas', 1)} process(es)): "
            f"{await _wait_healthy(stack, name, spec)}",
        )
    jobs = [job for job in generate(60, seed=3) if job.tenant_id in TENANTS][:JOBS]
    for tenant in TENANTS:
        mine = [job for job in jobs if job.tenant_id == tenant]
        security = transport_security(stack.kafka.settings_for(f"tenant-{tenant}"))
        await produce(stack.kafka.bootstrap_servers, request_events(mine, stack.signers), True, security)
    report(
        True, f"submitted {len(jobs)} signed requests from {', '.join(TENANTS)}, each as its own principal"
    )
    await _settle(stack)
    history = await collect_history(stack.kafka.settings_for(ADMIN, _reader_settings(stack)))
    placed = len(history.distinct("jobs.placed"))
    billed = len(history.distinct("jobs.billed"))
    report(placed > 0 and billed > 0, f"settled: {placed} placed, {billed} billed, the six invariants hold")
    for description, attempt in _acl_checks(stack.kafka, stack.root):
        try:
            await attempt()
            report(True, description)
        except CheckFailed as failure:
            report(False, f"{description}: {failure}")


def main() -> int:
    # The check prints a line per check; aiokafka's own log of each refusal it provokes would drown them.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sovereign-production-check-"))
    (root / "logs").mkdir()
    keys = root / "keys"
    keys.mkdir()
    compose_db = compose_services()["postgres"]["environment"]
    stack = Stack(
        root=root,
        postgres=LocalPostgres(user=compose_db["POSTGRES_USER"], database=compose_db["POSTGRES_DB"]),
        kafka=LocalKafka(root / "kafka"),
        opa=LocalOpa(log_path=root / "logs" / "opa.log"),
        keys=keys,
    )
    stack.signers = _start_keys(keys)
    failures = 0

    def report(ok: bool, line: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)

    try:
        asyncio.run(_run(stack, report))
    except (CheckFailed, RuntimeError, OSError, subprocess.CalledProcessError) as error:
        report(False, str(error))
    finally:
        for process in stack.processes.values():
            process.terminate()
        for process in stack.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        stack.opa.stop()
        stack.kafka.stop()
        stack.postgres.stop()
    print(
        f"{'FAILED' if failures else 'passed'} in {time.monotonic() - started:.0f} s; logs in {root / 'logs'}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
