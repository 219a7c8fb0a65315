"""The `sovereign` command itself: the embedded broker it starts is usable and stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import TOPICS, dead_letter_topic
from services.shared.settings import REPO_ROOT
from sovereign.cli import COMMAND_MODULES, build_parser

pytestmark = pytest.mark.broker


def test_broker_command_prints_a_working_address_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "broker"], stdout=subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().decode().strip()
        assert address.startswith("127.0.0.1:")
        assert "KAFKA_BOOTSTRAP_SERVERS=" + address in process.stdout.readline().decode()
        topics = asyncio.run(_list_topics(address))
        assert set(TOPICS) | {dead_letter_topic(t) for t in TOPICS} <= topics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def _list_topics(address: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def handlers(parser: argparse.ArgumentParser) -> Iterator[Callable[[argparse.Namespace], int]]:
    """The handler of every command the parser's modules registered, however deep."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from handlers(command)
    if (handler := parser.get_default("handler")) is not None:
        yield handler


def test_every_command_module_registers_commands_that_reach_their_handlers() -> None:
    parser = build_parser()
    commands = [
        "demo",
        "run placement",
        "submit job.json",
        "cancel --tenant t --job-id 1",
        "broker",
        "contracts",
        "jobs",
        "policy test",
        "policy publish --by someone",
        "policy diff a b",
        "policy what-if --against a",
        "decisions list",
        "decisions verify",
        "console serve",
        "console add-officer someone --role auditor",
        "keys new --dir d --key-id k --role tenant --principal t",
        "attest verify placed.json --month 2026-11",
        "acls",
        "kafka-init --secrets-dir d",
        "auditor keygen --dir d --key-id k",
        "auditor sign --key k --key-id k --out o",
        "usage --tenant t --period 2027-01",
        "invoice --tenant t --period 2027-01",
        "billing check",
        "status --service placement",
        "replay billing --into-data-dir d",
    ]
    reached = {parser.parse_args(command.split()).handler for command in commands}
    registered = set(handlers(parser))
    assert len(registered) == sum(1 for _ in handlers(parser)), "two commands share a handler"
    assert reached == registered, f"commands this test does not reach: {registered - reached}"
    assert {handler.__module__ for handler in registered} == {module.__name__ for module in COMMAND_MODULES}
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "no-such-service"])
    with pytest.raises(SystemExit):
        parser.parse_args(["usage", "--tenant", "t", "--period", "2027-13"])
    with pytest.raises(SystemExit):
        parser.parse_args(["policy", "what-if", "--against", "a", "--since", "last tuesday"])
    scoped = parser.parse_args(
        [
            "policy",
            "what-if",
            "--against",
            "a",
            "--since",
            "2027-01-01",
            "--until",
            "2027-02-01T09:00+09:00",
            "--rule",
            "exp-01",
        ]
    )
    assert scoped.since == datetime(2027, 1, 1, tzinfo=UTC)
    assert scoped.until == datetime(2027, 2, 1, tzinfo=UTC)
    assert scoped.rule == ["exp-01"]
