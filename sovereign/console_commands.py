"""`sovereign console ...`: the compliance officer's console (a web server on loopback by default) and its
officer accounts."""

from __future__ import annotations

import argparse
import getpass
import os

import uvicorn
from sqlalchemy import Engine

from services.governance.console.accounts import CONSOLE_TABLES, AccountError, Role, add_officer
from services.governance.console.app import build_console
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.shared.db import create_service_engine, database_url_for, unit_of_work
from services.shared.settings import Settings
from sovereign.options import Commands, connection_options, settings_of

# Where an officer's password may come from instead of the prompt (a script, a test).
PASSWORD_VARIABLE = "SOVEREIGN_OFFICER_PASSWORD"


def console_engine(settings: Settings) -> Engine:
    """Governance's database, with the console's tables (officers, sessions, failed sign-ins) in it."""
    return create_service_engine(
        database_url_for(settings, "governance"),
        "governance",
        [*GOVERNANCE_TABLES, *CONSOLE_TABLES],
        settings.database_schema_prefix,
    )


def register(commands: Commands) -> None:
    console = commands.add_parser(
        "console", help="the compliance officer's console in a browser, and its officer accounts"
    ).add_subparsers(dest="console_command", required=True)
    serve = console.add_parser("serve", help="serve the console (loopback by default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8400)
    serve.add_argument(
        "--secure-cookies", action="store_true", help="mark cookies Secure (when served behind TLS)"
    )
    connection_options(serve)
    serve.set_defaults(handler=_serve)
    officer = console.add_parser(
        "add-officer", help=f"add an officer (password from ${PASSWORD_VARIABLE} or a prompt)"
    )
    officer.add_argument("name")
    officer.add_argument("--role", required=True, choices=[role.value for role in Role])
    connection_options(officer)
    officer.set_defaults(handler=_add_officer)


def _serve(args: argparse.Namespace) -> int:
    app = build_console(console_engine(settings_of(args)), secure_cookies=args.secure_cookies)
    print(f"console on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _add_officer(args: argparse.Namespace) -> int:
    password = os.environ.get(PASSWORD_VARIABLE) or getpass.getpass(f"password for {args.name}: ")
    try:
        with unit_of_work(console_engine(settings_of(args))) as session:
            added = add_officer(session, args.name, Role(args.role), password)
    except AccountError as error:
        print(f"refused: {error}")
        return 2
    print(f"officer {added.name} added as {added.role.value}")
    return 0
