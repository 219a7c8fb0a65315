"""`sovereign kafka-init`: what compose's kafka-init does once the broker is up, as the admin, over the same
SASL_SSL connection the services use: every topic (the tenants' streams too), a SCRAM credential for every
principal that has a password file, and the ACLs of `sovereign acls`.

It speaks the Kafka admin protocol itself (three requests) rather than running Kafka's command-line tools,
which start a JVM per topic, user and ACL: some 200 JVMs, minutes of a start-up, against about a second."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest_v1
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from services.shared.domain.catalogue import load_catalogue
from services.shared.kafka import all_topics, client_options, ensure_topics, transport_security
from services.shared.settings import Settings
from sovereign.acls import Grant, all_grants
from sovereign.options import Commands, connection_options, settings_of

# Kafka's protocol codes (org.apache.kafka.common.acl and resource).
_RESOURCE_TOPIC, _RESOURCE_GROUP = 2, 3
_PATTERN_LITERAL, _PATTERN_PREFIXED = 3, 4
_OPERATIONS = {"Read": 3, "Write": 4}
_PERMISSION_ALLOW = 3
_SCRAM_SHA_512 = 2
# Kafka accepts 4096 to 16384 iterations for SCRAM-SHA-512; 8192 is the middle.
_SCRAM_ITERATIONS = 8192


class AlterUserScramCredentialsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterUserScramCredentialsRequest_v0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = AlterUserScramCredentialsResponse_v0
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterScramCredentials(Request[AlterUserScramCredentialsRequest_v0]):  # type: ignore[misc]
    API_KEY = 51

    def __init__(self, passwords: dict[str, str]) -> None:
        self._upsertions: list[tuple[str, int, int, bytes, bytes, dict[int, bytes]]] = []
        for user, password in sorted(passwords.items()):
            salt = os.urandom(32)
            salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _SCRAM_ITERATIONS)
            self._upsertions.append((user, _SCRAM_SHA_512, _SCRAM_ITERATIONS, salt, salted, {}))

    def build(
        self, request_struct_class: type[AlterUserScramCredentialsRequest_v0]
    ) -> AlterUserScramCredentialsRequest_v0:
        return request_struct_class([], self._upsertions, {})


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    """Every ACL in one request (aiokafka's own CreateAclsRequest carries one)."""

    API_KEY = 30

    def __init__(self, grants: list[Grant]) -> None:
        self._creations = [_acl_creation(grant) for grant in grants]

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self._creations)


def _acl_creation(grant: Grant) -> tuple[int, str, int, str, str, int, int]:
    if grant.resource.startswith("group:"):
        resource = (_RESOURCE_GROUP, grant.resource.removeprefix("group:"), _PATTERN_PREFIXED)
    elif grant.resource.endswith("*"):
        resource = (_RESOURCE_TOPIC, grant.resource.removesuffix("*"), _PATTERN_PREFIXED)
    else:
        resource = (_RESOURCE_TOPIC, grant.resource, _PATTERN_LITERAL)
    return (*resource, grant.principal, "*", _OPERATIONS[grant.operation], _PERMISSION_ALLOW)


async def _wait_until_logs_in(settings: Settings, user: str, secrets_dir: Path, within: float = 30.0) -> None:
    """The broker learns a new credential from its metadata log a moment after the controller took it: until
    then the principal is refused, so kafka-init ends only once each one logs in."""
    as_user = replace(settings, kafka_username=user, kafka_password_file=secrets_dir / f"kafka-{user}")
    deadline = asyncio.get_running_loop().time() + within
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, **client_options(transport_security(as_user))
        )
        try:
            await admin.start()
            return
        except KafkaError as error:
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaInitError(
                    f"{user} still cannot log in {within:.0f} s after its credential was set"
                ) from error
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


@dataclass(frozen=True)
class InitReport:
    topics: int
    users: list[str]
    acls: int
    missing_passwords: list[str]


class KafkaInitError(RuntimeError):
    pass


async def kafka_init(settings: Settings, secrets_dir: Path, partitions: int) -> InitReport:
    """Idempotent: topics that exist are left as they are, credentials are set again, ACLs that exist are
    kept (the broker ignores a duplicate)."""
    tenants = load_catalogue(settings.catalogue_dir).tenants
    security = transport_security(settings)
    await ensure_topics(settings.bootstrap_servers, all_topics(tenants), partitions, security)
    grants = all_grants(settings)
    principals = sorted({grant.principal.removeprefix("User:") for grant in grants})
    passwords = {
        name: (secrets_dir / f"kafka-{name}").read_text(encoding="utf-8").strip()
        for name in principals
        if (secrets_dir / f"kafka-{name}").is_file()
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(security))
    await admin.start()
    try:
        errors: list[str] = []
        if passwords:
            scram = await admin._send_request(_AlterScramCredentials(passwords))
            errors += [
                f"SCRAM credential of {user}: error {code} {message or ''}"
                for user, code, message, _ in scram.results
                if code
            ]
        acls = await admin._send_request(_CreateAcls(grants))
        errors += [
            f"ACL {grant}: error {code} {message or ''}"
            for grant, (code, message) in zip(grants, acls.creation_responses, strict=True)
            if code
        ]
    finally:
        await admin.close()
    if errors:
        raise KafkaInitError("; ".join(errors))
    # aiokafka logs each refused login as an error; until the credentials propagate, those are expected.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.gather(*(_wait_until_logs_in(settings, user, secrets_dir) for user in passwords))
    finally:
        client_log.setLevel(level)
    return InitReport(
        topics=len(all_topics(tenants)),
        users=sorted(passwords),
        acls=len(grants),
        missing_passwords=[name for name in principals if name not in passwords],
    )


def register(commands: Commands) -> None:
    kafka_init_command = commands.add_parser(
        "kafka-init",
        help="as the Kafka admin: every topic, a SCRAM credential per principal, the ACLs",
    )
    kafka_init_command.add_argument(
        "--secrets-dir",
        default="/run/secrets",
        help="where each principal's password is, as kafka-<principal> (default: compose's /run/secrets)",
    )
    connection_options(kafka_init_command)
    kafka_init_command.set_defaults(handler=_kafka_init)


def _kafka_init(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        report = asyncio.run(kafka_init(settings, Path(args.secrets_dir), settings.topic_partitions))
    except (KafkaInitError, OSError, ValueError) as error:
        print(f"kafka-init failed: {error}", file=sys.stderr)
        return 1
    print(f"kafka-init: {report.topics} topics, {len(report.users)} SCRAM users, {report.acls} ACLs")
    if report.missing_passwords:
        print(f"no password file, so no login, for: {', '.join(report.missing_passwords)}", file=sys.stderr)
    return 0
