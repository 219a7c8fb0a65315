"""Command-line entry point, `sovereign COMMAND ...`: each command module registers its own commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sovereign import (
    acls,
    attest_commands,
    auditor_commands,
    billing_commands,
    console_commands,
    contracts_export,
    decision_commands,
    demo,
    job_commands,
    kafka_init,
    keys,
    policy_commands,
    service_commands,
)

# In the order `sovereign --help` lists their commands.
COMMAND_MODULES = (
    service_commands,
    job_commands,
    demo,
    contracts_export,
    policy_commands,
    billing_commands,
    attest_commands,
    decision_commands,
    console_commands,
    acls,
    kafka_init,
    keys,
    auditor_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovereign", description="Sovereign AI job marketplace")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
