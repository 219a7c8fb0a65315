"""Read access to a service's own database, for the auditor's and operator's commands."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import Session

from services.shared.db import create_service_engine, database_url_for
from services.shared.settings import Settings


def service_session(settings: Settings, service: str, tables: list[Table]) -> Session:
    url = database_url_for(settings, service)
    return Session(create_service_engine(url, service, tables, settings.database_schema_prefix))
