"""`sovereign acls`: the Kafka ACLs of the production transport, derived from what each service subscribes to
and publishes, so the table cannot drift from the code. One principal per service and per tenant producer,
plus the compliance officer's and the auditor's; each is allowed only the topics it needs, and a tenant reads
nothing but its own stream."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contracts import TOPICS, dead_letter_topic, tenant_stream
from contracts.events import TENANT_STREAM_PREFIX
from services.registry import SERVICES
from services.shared.domain.catalogue import load_catalogue
from services.shared.runtime import TENANT_STREAMS_CHANNEL, Service
from services.shared.settings import Settings
from sovereign.options import Commands


@dataclass(frozen=True, order=True)
class Grant:
    principal: str
    operation: str  # Read or Write (each implies Describe)
    resource: str  # a topic, a topic prefix ending in "*", or "group:" and a consumer-group prefix


# A grant on every tenant's stream: a prefixed ACL, which only the marketplace's own services get.
EVERY_TENANT_STREAM = f"{TENANT_STREAM_PREFIX}*"


def service_grants(service: Service) -> list[Grant]:
    """Read what it subscribes to (and its groups), write what it publishes (every tenant's stream if it
    copies events there) and the dead letters of what it reads, read every dead-letter topic (its health
    check counts them)."""
    principal = f"User:{service.name}"
    subscribers, publishers = service.broker.subscribers, service.broker.publishers
    read = {topic.name for subscriber in subscribers for topic in subscriber.topics}  # type: ignore[attr-defined]
    written = {
        EVERY_TENANT_STREAM if publisher.topic == TENANT_STREAMS_CHANNEL else publisher.topic  # type: ignore[attr-defined]
        for publisher in publishers
    }
    return [
        *(Grant(principal, "Read", topic) for topic in read),
        Grant(principal, "Read", f"group:{service.name}."),
        *(Grant(principal, "Write", topic) for topic in written | {dead_letter_topic(t) for t in read}),
        *(Grant(principal, "Read", dead_letter_topic(topic)) for topic in TOPICS),
    ]


def tenant_grants(tenant_id: str) -> list[Grant]:
    """A tenant writes its requests and cancels and reads its own stream (in groups named after it): the
    shared outcome topics carry every tenant's events, so it reads none of them."""
    principal = f"User:tenant-{tenant_id}"
    stream = tenant_stream(tenant_id)
    return [
        Grant(principal, "Write", "jobs.requested"),
        Grant(principal, "Write", "jobs.cancel"),
        Grant(principal, "Read", stream),
        Grant(principal, "Read", f"group:{stream}."),
    ]


def all_grants(settings: Settings) -> list[Grant]:
    with tempfile.TemporaryDirectory() as scratch:
        local = Settings(data_dir=Path(scratch), catalogue_dir=settings.catalogue_dir)
        built = [entry.build(local) for entry in SERVICES.values()]
        grants = [grant for service in built for grant in service_grants(service)]
        for service in built:
            service.engine.dispose()
    grants += [
        grant for tenant in load_catalogue(settings.catalogue_dir).tenants for grant in tenant_grants(tenant)
    ]
    grants += [
        # A factory reports its capacity changes (maintenance, a resized pool) as its own principal: the
        # simulated agent makes none, but a site's real adapter does (the ACLs on Apache Kafka found this).
        Grant("User:factory-agent", "Write", "capacity.updated"),
        Grant("User:officer", "Write", "policy.published"),
        Grant("User:auditor", "Read", "jobs.placed"),
    ]
    return sorted(set(grants))


def render_table(grants: list[Grant]) -> str:
    """Markdown: one row per principal, what it reads and what it writes (reading every dead-letter topic
    is one entry)."""
    every_dlq = {dead_letter_topic(topic) for topic in TOPICS}
    rows = ["| principal | reads | writes |", "|---|---|---|"]
    for principal in sorted({g.principal for g in grants}):
        reads = {g.resource for g in grants if g.principal == principal and g.operation == "Read"}
        writes = {g.resource for g in grants if g.principal == principal and g.operation == "Write"}
        read_all_dlq = every_dlq <= reads
        read_text = ", ".join(f"`{name}`" for name in sorted(reads - every_dlq if read_all_dlq else reads))
        if read_all_dlq:
            read_text += ", every `*.dlq`"
        write_text = ", ".join(f"`{name}`" for name in sorted(writes))
        rows.append(f"| `{principal}` | {read_text or 'nothing'} | {write_text or 'nothing'} |")
    return "\n".join(rows) + "\n"


def register(commands: Commands) -> None:
    acls = commands.add_parser("acls", help="the Kafka ACLs each principal needs, derived from the code")
    acls.set_defaults(handler=_acls)


def _acls(args: argparse.Namespace) -> int:
    print(render_table(all_grants(Settings.from_env())), end="")
    return 0
