"""Read access to a service's own database, for the auditor's and operator's commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Table
from sqlmodel import Session

from services.shared.db import create_service_engine, database_url_for
from services.shared.settings import Settings


@contextlib.contextmanager
def service_session(settings: Settings, service: str, tables: list[Table]) -> Iterator[Session]:
    """A session on the service's database; its engine (and connections) go when the block ends, so a
    command polling many times does not pile up connection pools."""
    url = database_url_for(settings, service)
    engine = create_service_engine(url, service, tables, settings.database_schema_prefix)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()
