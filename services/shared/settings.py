"""Settings read once from the environment; the CLI overrides them with its options."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_pairs(variable: str, text: str) -> dict[str, str]:
    """'a=x,b=y' -> {'a': 'x', 'b': 'y'}; a clear error naming the variable for anything else."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, value = item.partition("=")
        if not separator or not name or not value:
            raise ValueError(f"{variable}: {item!r} is not name=value")
        pairs[name] = value
    return pairs


def parse_failure_rates(text: str) -> dict[str, float]:
    """'site-a=0.1,site-b=1' -> {'site-a': 0.1, 'site-b': 1.0}; a clear error for anything else."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        site_id, separator, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not separator or not site_id or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"SOVEREIGN_SITE_FAILURE_RATES: {item!r} is not site=rate with a rate from 0 to 1"
            )
        rates[site_id] = value
    return rates


def parse_crash_points(text: str) -> dict[str, int]:
    """'handler_committed=3,outbox_published=1' -> {'handler_committed': 3, 'outbox_published': 1}."""
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, count = item.partition("=")
        if not separator or not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"SOVEREIGN_CRASH_AT: {item!r} is not point=n with n a positive whole number")
        points[name] = int(count)
    return points


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    # None means: a SQLite file per service under data_dir.
    database_url: str | None = None
    # PostgreSQL: each service keeps its tables in schema <prefix><service>.
    database_schema_prefix: str = ""
    data_dir: Path = REPO_ROOT / "var"
    policy_dir: Path = REPO_ROOT / "policies"
    catalogue_dir: Path = REPO_ROOT / "catalogue"
    # Tansu rejects InitProducerId, so the embedded broker turns this off; real Kafka keeps it on.
    idempotent_producer: bool = True
    topic_partitions: int = 4
    # Simulated seconds per real second in the factory agent.
    time_scale: float = 3600.0
    # Which sites this factory agent simulates; empty means every site in the catalogue.
    factory_sites: tuple[str, ...] = field(default_factory=tuple)
    # Simulated hardware faults: the share of runs that fail at each site (factory agent).
    site_failure_rates: dict[str, float] = field(default_factory=dict)
    # What runs the factory agent's jobs (backends.BackendKind): the simulation, or a Slurm cluster that the
    # SLURM_CONF of its environment names, each pool a partition and each job kind a launch script.
    factory_backend: str = "simulation"
    slurm_partitions: dict[str, str] = field(default_factory=dict)
    slurm_launch_scripts: dict[str, Path] = field(default_factory=dict)
    # A Slurm run's usage is reported in intervals of this many seconds of its accounted time.
    slurm_usage_interval_seconds: int = 3600
    marketplace_fee_bps: int = 500
    outbox_poll_seconds: float = 0.5
    policy_budget_ms: float = 250.0
    # How long placement leaves a queued job before its periodic pass decides it again.
    queue_retry_seconds: float = 60.0
    # Kafka consumer session: a member silent this long is dropped and its partitions reassigned.
    session_timeout_ms: int = 10_000
    # A consumer handles what its topic has ready, up to this many events, in one transaction; an idle
    # consumer polls every batch_wait_ms (twice that at worst before it sees a new event).
    batch_max_events: int = 200
    batch_wait_ms: int = 10
    # How long the broker may hold a consumer's fetch when nothing is ready. Apache Kafka answers as soon as
    # a record arrives, so aiokafka's 500 ms costs nothing there; Tansu holds every fetch this long, so on it
    # each hop waits for it (embedded_broker.CLIENT_ENV sets it low).
    fetch_max_wait_ms: int = 500
    # Fault injection for the fault suite only: kill the process the nth time it reaches a named point.
    crash_points: dict[str, int] = field(default_factory=dict)
    # When set, placement asks this OPA server instead of the in-process engine.
    opa_url: str | None = None
    # JSON of auditor key id -> public key (placement), and of site id -> attestation (factory agent).
    auditor_keys_path: Path | None = None
    site_attestations_path: Path | None = None
    # The public keys of tenants, factories and officers (placement, billing); none: every signed topic is
    # refused. This process's own signing key (a factory agent's), and how old a signed envelope may be.
    keyring_path: Path | None = None
    signing_key_path: Path | None = None
    signing_key_id: str = ""
    signature_max_age_seconds: float = 900.0
    # Kafka transport: PLAINTEXT (the embedded broker), SSL, or SASL_SSL with SCRAM; the password is read
    # from a file (a mounted secret), never from the environment.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password_file: Path | None = None
    kafka_ca_file: Path | None = None
    # Whether a service creates missing topics at start (with ACLs, an admin does: kafka-init).
    create_topics: bool = True
    # Placement's marketplace key: it signs the attestation of every placement.
    attestation_key_path: Path | None = None
    attestation_key_id: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        base = cls()
        return replace(
            base,
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", base.bootstrap_servers),
            database_url=env.get("DATABASE_URL") or None,
            database_schema_prefix=env.get("SOVEREIGN_DB_SCHEMA_PREFIX", ""),
            data_dir=Path(env.get("SOVEREIGN_DATA_DIR", str(base.data_dir))),
            policy_dir=Path(env.get("SOVEREIGN_POLICY_DIR", str(base.policy_dir))),
            catalogue_dir=Path(env.get("SOVEREIGN_CATALOGUE_DIR", str(base.catalogue_dir))),
            idempotent_producer=_flag(env.get("KAFKA_IDEMPOTENT_PRODUCER"), base.idempotent_producer),
            topic_partitions=int(env.get("KAFKA_TOPIC_PARTITIONS", base.topic_partitions)),
            time_scale=float(env.get("SOVEREIGN_TIME_SCALE", base.time_scale)),
            factory_sites=tuple(s for s in env.get("SOVEREIGN_FACTORY_SITES", "").split(",") if s),
            site_failure_rates=parse_failure_rates(env.get("SOVEREIGN_SITE_FAILURE_RATES", "")),
            factory_backend=env.get("SOVEREIGN_FACTORY_BACKEND", base.factory_backend),
            slurm_partitions=parse_pairs(
                "SOVEREIGN_SLURM_PARTITIONS", env.get("SOVEREIGN_SLURM_PARTITIONS", "")
            ),
            slurm_launch_scripts={
                kind: Path(path)
                for kind, path in parse_pairs(
                    "SOVEREIGN_SLURM_LAUNCH_SCRIPTS", env.get("SOVEREIGN_SLURM_LAUNCH_SCRIPTS", "")
                ).items()
            },
            slurm_usage_interval_seconds=int(
                env.get("SOVEREIGN_SLURM_USAGE_INTERVAL_SECONDS", base.slurm_usage_interval_seconds)
            ),
            marketplace_fee_bps=int(env.get("SOVEREIGN_MARKETPLACE_FEE_BPS", base.marketplace_fee_bps)),
            policy_budget_ms=float(env.get("SOVEREIGN_POLICY_BUDGET_MS", base.policy_budget_ms)),
            queue_retry_seconds=float(env.get("SOVEREIGN_QUEUE_RETRY_SECONDS", base.queue_retry_seconds)),
            session_timeout_ms=int(env.get("KAFKA_SESSION_TIMEOUT_MS", base.session_timeout_ms)),
            batch_max_events=int(env.get("SOVEREIGN_BATCH_MAX_EVENTS", base.batch_max_events)),
            batch_wait_ms=int(env.get("SOVEREIGN_BATCH_WAIT_MS", base.batch_wait_ms)),
            fetch_max_wait_ms=int(env.get("KAFKA_FETCH_MAX_WAIT_MS", base.fetch_max_wait_ms)),
            crash_points=parse_crash_points(env.get("SOVEREIGN_CRASH_AT", "")),
            opa_url=env.get("OPA_URL") or None,
            auditor_keys_path=Path(env["SOVEREIGN_AUDITOR_KEYS"])
            if env.get("SOVEREIGN_AUDITOR_KEYS")
            else None,
            site_attestations_path=(
                Path(env["SOVEREIGN_SITE_ATTESTATIONS"]) if env.get("SOVEREIGN_SITE_ATTESTATIONS") else None
            ),
            keyring_path=Path(env["SOVEREIGN_KEYRING"]) if env.get("SOVEREIGN_KEYRING") else None,
            signing_key_path=Path(env["SOVEREIGN_SIGNING_KEY"]) if env.get("SOVEREIGN_SIGNING_KEY") else None,
            signing_key_id=env.get("SOVEREIGN_SIGNING_KEY_ID", ""),
            kafka_security_protocol=env.get("KAFKA_SECURITY_PROTOCOL", base.kafka_security_protocol),
            kafka_sasl_mechanism=env.get("KAFKA_SASL_MECHANISM", base.kafka_sasl_mechanism),
            kafka_username=env.get("KAFKA_SASL_USERNAME", ""),
            kafka_password_file=(
                Path(env["KAFKA_SASL_PASSWORD_FILE"]) if env.get("KAFKA_SASL_PASSWORD_FILE") else None
            ),
            kafka_ca_file=Path(env["KAFKA_SSL_CA_FILE"]) if env.get("KAFKA_SSL_CA_FILE") else None,
            create_topics=_flag(env.get("KAFKA_CREATE_TOPICS"), base.create_topics),
            attestation_key_path=(
                Path(env["SOVEREIGN_ATTESTATION_KEY"]) if env.get("SOVEREIGN_ATTESTATION_KEY") else None
            ),
            attestation_key_id=env.get("SOVEREIGN_ATTESTATION_KEY_ID", ""),
            signature_max_age_seconds=float(
                env.get("SOVEREIGN_SIGNATURE_MAX_AGE_SECONDS", base.signature_max_age_seconds)
            ),
        )
