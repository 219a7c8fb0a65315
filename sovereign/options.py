"""What the commands' arguments have in common: where the broker and the databases are, dates and months,
and the type of the sub-command table each command module's `register()` adds its commands to."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from services.shared.settings import Settings

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def connection_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    command.add_argument(
        "--database-url", help="SQLAlchemy URL (env DATABASE_URL); default: SQLite per service"
    )
    command.add_argument("--data-dir", help="where SQLite files live (env SOVEREIGN_DATA_DIR)")


def settings_of(args: argparse.Namespace) -> Settings:
    """The environment's settings, with what the connection options on the command line override."""
    settings = Settings.from_env()
    if getattr(args, "bootstrap_servers", None):
        settings = replace(settings, bootstrap_servers=args.bootstrap_servers)
    if getattr(args, "database_url", None):
        settings = replace(settings, database_url=args.database_url)
    if getattr(args, "data_dir", None):
        settings = replace(settings, data_dir=Path(args.data_dir))
    return settings


def moment(text: str) -> datetime:
    """A date (its start, UTC) or a date and time (UTC unless it has an offset)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO date and time"
        ) from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def period(text: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM")
    return text
