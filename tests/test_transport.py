"""The production transport: Kafka security settings, and ACLs derived from what the services subscribe to
and publish (the README's table and `sovereign kafka-init` are that derivation, checked here)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from faststream.security import SASLScram512

from contracts import stream_tenant
from services.shared.domain.catalogue import load_catalogue
from services.shared.kafka import client_options, transport_security
from services.shared.settings import REPO_ROOT, Settings
from sovereign.acls import EVERY_TENANT_STREAM, Grant, all_grants, render_table

GRANTS = all_grants(Settings())


def test_sasl_ssl_with_scram_reads_its_password_from_a_file(tmp_path: Path) -> None:
    password = tmp_path / "placement.password"
    password.write_text("s3cret\n")
    settings = replace(
        Settings(),
        kafka_security_protocol="SASL_SSL",
        kafka_username="placement",
        kafka_password_file=password,
    )
    security = transport_security(settings)
    assert isinstance(security, SASLScram512)
    options = client_options(security)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("placement", "s3cret")
    assert options["ssl_context"] is not None
    assert transport_security(Settings()) is None and client_options(None) == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "use one of PLAINTEXT, SSL, SASL_SSL"),
        ({"kafka_security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"}, "use SCRAM-SHA-256 or"),
    ],
)
def test_a_transport_that_would_send_secrets_in_the_clear_is_refused(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        transport_security(replace(Settings(), **changes))  # type: ignore[arg-type]


def writers(topic: str) -> set[str]:
    return {g.principal for g in GRANTS if g.operation == "Write" and g.resource == topic}


def test_each_principal_may_write_only_what_it_produces() -> None:
    assert writers("jobs.placed") == {"User:placement"}
    assert writers("usage.reported") == writers("capacity.offered") == {"User:factory-agent"}
    assert writers("policy.published") == {"User:officer"}
    assert writers("jobs.billed") == {"User:billing"}
    tenants = {g.principal for g in GRANTS if g.principal.startswith("User:tenant-")}
    assert len(tenants) >= 5
    assert writers("jobs.requested") == writers("jobs.cancel") == tenants
    # Only the services that tell tenants (or relay factories' reports) write into tenants' streams.
    assert writers(EVERY_TENANT_STREAM) == {"User:placement", "User:billing", "User:governance"}
    streams_written = {g.resource for g in GRANTS if g.operation == "Write" and stream_tenant(g.resource)}
    assert streams_written == {EVERY_TENANT_STREAM}
    assert {g.resource for g in GRANTS if g.principal == "User:auditor"} == {"jobs.placed"}


def test_a_tenant_reads_its_own_stream_and_nothing_else() -> None:
    """Every shared outcome topic carries every tenant's events: a tenant reads only its own stream, a
    literal topic (tenant.mois does not cover tenant.mois-2), in groups under its own prefix."""
    for tenant in load_catalogue(REPO_ROOT / "catalogue").tenants:
        principal = f"User:tenant-{tenant}"
        reads = {g.resource for g in GRANTS if g.principal == principal and g.operation == "Read"}
        assert reads == {f"tenant.{tenant}", f"group:tenant.{tenant}."}
    assert not [g for g in GRANTS if g.operation == "Read" and g.resource == EVERY_TENANT_STREAM]
    assert Grant("User:placement", "Write", EVERY_TENANT_STREAM) in GRANTS


def test_each_service_reads_what_it_subscribes_to_in_its_own_groups() -> None:
    assert Grant("User:placement", "Read", "jobs.requested") in GRANTS
    assert Grant("User:billing", "Read", "usage.reported") in GRANTS
    assert Grant("User:placement", "Read", "usage.reported") not in GRANTS
    groups = {
        g.principal: g.resource
        for g in GRANTS
        if g.resource.startswith("group:") and not g.principal.startswith("User:tenant-")
    }
    assert groups == {
        f"User:{name}": f"group:{name}." for name in ("placement", "factory-agent", "billing", "governance")
    }


def test_the_readme_table_is_what_the_code_derives() -> None:
    """kafka-init grants these same ACLs (`sovereign kafka-init`, tested on Apache Kafka)."""
    assert render_table(GRANTS) in (REPO_ROOT / "README.md").read_text(), (
        "run `sovereign acls` into the README"
    )
