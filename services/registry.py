"""The marketplace's services, written once: each one's name, how it is built and the tables it owns.
Every list of services (the command line, status, history, the ACLs, the AsyncAPI documents, the fault
harness, the benchmark) reads this one. What each consumes and publishes is read off the built service, so
it cannot drift from the code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Table

from services.billing import app as billing
from services.billing import storage as billing_storage
from services.factory_agent import app as factory_agent
from services.factory_agent import storage as factory_storage
from services.governance import app as governance
from services.governance import storage as governance_storage
from services.placement import app as placement
from services.placement import storage as placement_storage
from services.shared.runtime import Service
from services.shared.settings import Settings


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    build: Callable[[Settings], Service]
    # Its own tables, besides the outbox, inbox and worker tables every service has.
    tables: Sequence[Table]


SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in (
        ServiceEntry(placement.NAME, placement.build, placement_storage.TABLES),
        ServiceEntry(factory_agent.NAME, factory_agent.build, factory_storage.TABLES),
        ServiceEntry(billing.NAME, billing.build, billing_storage.TABLES),
        ServiceEntry(governance.NAME, governance.build, governance_storage.TABLES),
    )
}
