"""compose.yaml, checked without a container engine: the Compose specification's schema, the images and
settings of the production shape, and every service started here with the very command the file gives."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.registry import SERVICES
from services.shared.settings import REPO_ROOT, Settings
from sovereign.acls import all_grants
from sovereign.cli import build_parser
from tests.conftest import TEST_KEYS, drop_schemas

COMPOSE = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
# The marketplace's services (kafka-init is built from the same image but runs once).
APP_SERVICES = {
    name: spec
    for name, spec in COMPOSE["services"].items()
    if spec.get("command", [])[:2] == ["sovereign", "run"]
}
BROKER_CONFIG = (REPO_ROOT / "deploy" / "kafka" / "server.properties").read_text()


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_validation_would_catch_a_mistake() -> None:
    schema = compose_schema()
    broken = {
        **COMPOSE,
        "services": {**COMPOSE["services"], "billing": {**APP_SERVICES["billing"], "replicas": "x"}},
    }
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_production_shape() -> None:
    services = COMPOSE["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "process.roles=broker,controller" in BROKER_CONFIG  # KRaft: no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    assert services["opa"]["image"].startswith("openpolicyagent/opa:")
    assert "./policies:/policies:ro" in services["opa"]["volumes"]
    assert services["postgres"]["image"].startswith("postgres:")
    for name, spec in APP_SERVICES.items():
        env = spec["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services, name
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"], name
        assert env["KAFKA_IDEMPOTENT_PRODUCER"] == "true", name  # real Kafka accepts the idempotent producer
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for folder in ("contracts", "services", "sovereign", "policies", "catalogue"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def test_kafka_takes_clients_over_tls_with_scram_and_enforces_acls() -> None:
    config = dict(line.split("=", 1) for line in BROKER_CONFIG.splitlines() if "=" in line and line[0] != "#")
    advertised = config["advertised.listeners"].split(",")
    assert advertised == ["SASL_SSL://@ADVERTISED_HOST@:@PORT@"]  # the only listener clients are told about
    start = (REPO_ROOT / "deploy" / "kafka" / "start.sh").read_text()
    # start.sh fills it in with compose's host and port unless told otherwise (the suite runs it on loopback).
    assert 'KAFKA_ADVERTISED_HOST="${KAFKA_ADVERTISED_HOST:-kafka}"' in start
    assert 'KAFKA_PORT="${KAFKA_PORT:-9092}"' in start
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["authorizer.class.name"].endswith("StandardAuthorizer")
    assert config["allow.everyone.if.no.acl.found"] == "false"
    services = COMPOSE["services"]
    assert services["kafka"]["command"] == ["/bin/bash", "/deploy/kafka/start.sh"]
    init = services["kafka-init"]
    args = build_parser().parse_args(init["command"][1:])
    assert (init["command"][0], args.command, args.secrets_dir) == ("sovereign", "kafka-init", "/run/secrets")
    assert init["environment"]["KAFKA_SASL_USERNAME"] == "admin"
    assert init["environment"]["KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka-admin"
    principals = {g.principal.removeprefix("User:") for g in all_grants(Settings())}
    secrets = {f"kafka-{name}" for name in {"admin", *principals}}
    assert set(COMPOSE["secrets"]) == secrets == set(services["kafka-init"]["secrets"])
    for name, spec in APP_SERVICES.items():
        env = spec["environment"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["KAFKA_CREATE_TOPICS"] == "false", name
        assert env["KAFKA_SASL_USERNAME"] == name and spec["secrets"] == [f"kafka-{name}"], name
        assert env["KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka-{name}", name
        assert depends(spec, "kafka-init") == "service_completed_successfully", name


def depends(spec: dict[str, Any], service: str) -> str:
    condition: str = spec["depends_on"][service]["condition"]
    return condition


def test_every_service_has_a_container_and_every_container_a_real_command() -> None:
    assert set(APP_SERVICES) == set(SERVICES)
    for name, spec in APP_SERVICES.items():
        program, *arguments = spec["command"]
        assert program == "sovereign"
        args = build_parser().parse_args(arguments)
        assert args.command == "run" and args.service == name
        check, program, *arguments = spec["healthcheck"]["test"]
        assert (check, program) == ("CMD", "sovereign")
        args = build_parser().parse_args(arguments)
        assert (args.command, args.service, args.this_host) == ("status", name, True)


@pytest.mark.broker
def test_every_service_starts_with_its_compose_command_and_stops_cleanly(
    kafka: str, tmp_path: Path, postgres_url: str
) -> None:
    """On PostgreSQL, as compose gives every service a DATABASE_URL."""
    url, prefix = postgres_url, f"c{uuid.uuid4().hex[:10]}_"
    processes = []
    envs = {}
    for name, spec in sorted(APP_SERVICES.items()):
        env = {
            **os.environ,
            **{k: str(v) for k, v in spec["environment"].items()},
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "KAFKA_IDEMPOTENT_PRODUCER": "false",
            "SOVEREIGN_DATA_DIR": str(tmp_path),
            "SOVEREIGN_DB_SCHEMA_PREFIX": prefix,
            **TEST_KEYS.service_env(),  # the files compose mounts at /keys
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",  # Tansu here; compose's broker takes SASL_SSL
            "DATABASE_URL": url,
        }
        # The container's PATH has the project's `sovereign`; here it is the same entry point via -m.
        command = [sys.executable, "-m", *spec["command"]]
        envs[name] = env
        # Unbuffered: a buffered readline can take in a second line that select() then never reports.
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, cwd=REPO_ROOT, bufsize=0)
        processes.append((name, process))
    try:
        for name, process in processes:
            assert _wait_for_line(process, b'"service_started"', within=60), f"{name} did not start"
        # Each container's health check says healthy (run together: each reads the broker for a second).
        checks = {
            name: subprocess.Popen(
                [sys.executable, "-m", *spec["healthcheck"]["test"][1:]],
                env=envs[name],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for name, spec in sorted(APP_SERVICES.items())
        }
        for name, check in checks.items():
            output, _ = check.communicate(timeout=60)
            assert check.returncode == 0, (name, output.decode())
        for _, process in processes:
            process.send_signal(signal.SIGTERM)
        for name, process in processes:
            assert process.wait(timeout=30) == 0, f"{name} did not stop cleanly on SIGTERM"
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
        drop_schemas(url, prefix)


def _wait_for_line(process: subprocess.Popen[bytes], marker: bytes, within: float) -> bool:
    assert process.stderr is not None
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stderr], [], [], remaining)
        if not ready:
            return False
        line = process.stderr.readline()
        if not line:
            return False  # the process exited
        if marker in line:
            return True
    return False
