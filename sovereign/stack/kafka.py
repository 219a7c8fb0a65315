"""Apache Kafka as compose runs it, as a process: deploy/kafka/start.sh (KRaft, SASL_SSL with SCRAM-SHA-512,
the standard authorizer) on free loopback ports, TLS from certificates made at start, then kafka-init
(topics, a SCRAM credential per principal, the ACLs) as the admin."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.shared.embedded_broker import free_loopback_port
from services.shared.kafka import client_options, transport_security
from services.shared.settings import REPO_ROOT, Settings
from sovereign.acls import all_grants
from sovereign.kafka_init import InitReport, kafka_init
from sovereign.stack.installation import installation

START_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "start.sh"
ADMIN = "admin"


def make_tls(directory: Path, hosts: list[str]) -> None:
    """ca.pem (a CA made for this run) and kafka.pem (the broker's key and certificate, for the given host
    names and addresses), as compose expects them in ./secrets/tls."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sovereign-marketplace test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "kafka.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + certificate.public_bytes(pem)
    )
    (directory / "kafka.pem").chmod(0o600)


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, never starting with "-" (kafka-storage would
    take it for an option, as Kafka's own random-uuid knows)."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


class LocalKafka:
    """One KRaft node started by deploy/kafka/start.sh, its data kept across restarts until `remove`."""

    def __init__(self, root: Path | None = None, partitions: int = 4) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="sovereign-kafka-"))
        self.secrets_dir = self.root / "secrets"
        self.tls_dir = self.root / "tls"
        self.data_dir = self.root / "data"
        self.config_dir = self.root / "config"
        self.log_path = self.root / "kafka.log"
        self.partitions = partitions
        self.port = free_loopback_port()
        self.controller_port = free_loopback_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.cluster_id = new_cluster_id()
        self._process: subprocess.Popen[bytes] | None = None
        for directory in (self.secrets_dir, self.data_dir, self.config_dir):
            directory.mkdir(parents=True, exist_ok=True)
        make_tls(self.tls_dir, ["127.0.0.1", "localhost", "kafka"])
        # A password per principal, as compose's secrets hold them (secrets/kafka/NAME.password).
        for principal in [ADMIN, *self.principals()]:
            self.set_password(principal, secrets.token_hex(24))

    @staticmethod
    def principals() -> list[str]:
        return sorted({grant.principal.removeprefix("User:") for grant in all_grants(Settings())})

    def set_password(self, principal: str, password: str) -> None:
        path = self.password_file(principal)
        path.write_text(password + "\n", encoding="utf-8")
        path.chmod(0o600)

    def password_file(self, principal: str) -> Path:
        return self.secrets_dir / f"kafka-{principal}"

    def environment(self) -> dict[str, str]:
        """start.sh's and admin-client.sh's settings for this node (compose's defaults otherwise)."""
        return {
            **os.environ,
            "KAFKA_HOME": str(installation().kafka_home),
            "SECRETS_DIR": str(self.secrets_dir),
            "KAFKA_TLS_DIR": str(self.tls_dir),
            "KAFKA_DATA_DIR": str(self.data_dir),
            "KAFKA_CONFIG_DIR": str(self.config_dir),
            "KAFKA_LISTEN_HOST": "127.0.0.1",
            "KAFKA_ADVERTISED_HOST": "127.0.0.1",
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "CLUSTER_ID": self.cluster_id,
            # Two cores run the broker, four services and the suite: a small heap starts sooner.
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx768m",
        }

    def settings_for(self, principal: str, base: Settings | None = None) -> Settings:
        """A client's settings as compose gives a service: SASL_SSL, SCRAM-SHA-512, its own password."""
        return replace(
            base or Settings(),
            bootstrap_servers=self.bootstrap_servers,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_username=principal,
            kafka_password_file=self.password_file(principal),
            kafka_ca_file=self.tls_dir / "ca.pem",
            create_topics=False,
            idempotent_producer=True,
            fetch_max_wait_ms=Settings.fetch_max_wait_ms,
        )

    def client_env(self, principal: str) -> dict[str, str]:
        """The transport settings compose gives a service, for a process connecting as the principal."""
        settings = self.settings_for(principal)
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
            "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
            "KAFKA_SSL_CA_FILE": str(settings.kafka_ca_file),
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD_FILE": str(settings.kafka_password_file),
            "KAFKA_CREATE_TOPICS": "false",
            "KAFKA_IDEMPOTENT_PRODUCER": "true",
            "KAFKA_FETCH_MAX_WAIT_MS": str(settings.fetch_max_wait_ms),
        }

    def start(self, timeout: float = 90.0) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            ["bash", str(START_SCRIPT)],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not (self._listening() and asyncio.run(self._admin_answers())):
            if self._process.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Kafka did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    async def _admin_answers(self) -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=5000,
            **client_options(transport_security(self.settings_for(ADMIN))),
        )
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # not up yet: refused, a half-open listener, metadata not ready
            return False
        finally:
            await admin.close()

    async def init(self) -> InitReport:
        """kafka-init: the topics, every principal's SCRAM credential and the ACLs."""
        return await kafka_init(
            self.settings_for(ADMIN, Settings(catalogue_dir=REPO_ROOT / "catalogue")),
            self.secrets_dir,
            self.partitions,
        )

    def kill(self) -> None:
        """kill -9 of the broker (a crash): its data directory stays for a restart."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def probe_write(
    kafka: LocalKafka, principal: str, topics: list[str], settings: Settings | None = None
) -> None:
    """One record to each topic as the principal (or with the given client settings): raises what the
    broker refuses."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=10_000,
        **client_options(transport_security(settings or kafka.settings_for(principal))),
    )
    try:
        await producer.start()
        for topic in topics:
            await producer.send_and_wait(topic, b"acl probe", key=b"probe")
    finally:
        await producer.stop()


async def probe_read(kafka: LocalKafka, principal: str, topics: list[str], group: str | None) -> None:
    """Fetch from the topics (and commit, in the group if one) as the principal: raises what the broker
    refuses."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(transport_security(kafka.settings_for(principal))),
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=1000)
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
