"""`sovereign run | status | replay | broker`: running the services and the embedded broker, asking how they
are, and rebuilding a service's database from its topics."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import replace
from pathlib import Path

from services.registry import SERVICES
from services.shared.domain.catalogue import load_catalogue
from services.shared.logging import configure_logging
from services.shared.runtime import serve_until_signalled
from services.shared.settings import Settings
from sovereign.embedded import serve_embedded_broker
from sovereign.options import Commands, connection_options, settings_of
from sovereign.replay import REPLAYABLE, replay
from sovereign.status import status_command


def register(commands: Commands) -> None:
    run = commands.add_parser("run", help="run one service until SIGTERM or Ctrl-C")
    run.add_argument("service", choices=sorted(SERVICES))
    connection_options(run)
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status",
        help="each service's workers, consumer lag, outbox and dead letters; exit 1 if one is not ready",
    )
    status.add_argument("--service", choices=sorted(SERVICES), help="only this service")
    status.add_argument(
        "--this-host", action="store_true", help="only workers on this host (a container's health check)"
    )
    connection_options(status)
    status.set_defaults(handler=_status)

    rebuild = commands.add_parser(
        "replay", help="rebuild a service's database from its topics, read from offset zero"
    )
    rebuild.add_argument("service", choices=REPLAYABLE)
    rebuild.add_argument("--into-data-dir", required=True, help="where the fresh SQLite file is written")
    rebuild.add_argument("--into-database-url", help="a fresh database instead (e.g. PostgreSQL)")
    connection_options(rebuild)
    rebuild.set_defaults(handler=_replay)

    broker = commands.add_parser("broker", help="start the embedded Tansu broker and print its address")
    broker.add_argument("--port", type=int, default=None, help="default: a free loopback port")
    broker.add_argument("--partitions", type=int, default=4)
    broker.set_defaults(handler=_broker)


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.service, os.environ.get("LOG_LEVEL", "INFO"))
    service = SERVICES[args.service].build(settings_of(args))
    asyncio.run(serve_until_signalled(service))
    return 0


def _status(args: argparse.Namespace) -> int:
    return status_command(settings_of(args), args.service, args.this_host)


def _replay(args: argparse.Namespace) -> int:
    source = settings_of(args)
    target = replace(source, data_dir=Path(args.into_data_dir), database_url=args.into_database_url)
    count = asyncio.run(replay(SERVICES[args.service].build, source, target))
    print(f"{args.service}: {count} events replayed into a fresh database")
    return 0


def _broker(args: argparse.Namespace) -> int:
    tenants = load_catalogue(Settings.from_env().catalogue_dir).tenants
    return serve_embedded_broker(args.port, args.partitions, tenants)
