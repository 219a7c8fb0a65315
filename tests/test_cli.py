"""The `sovereign` command itself: the embedded broker it starts is usable and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import TOPICS, dead_letter_topic
from services.shared.settings import REPO_ROOT
from sovereign import cli
from sovereign.cli import build_parser

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


def test_every_handler_is_reachable_from_the_command_line() -> None:
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
    reached = {parser.parse_args(command.split()).handler.__name__ for command in commands}
    defined = {
        name
        for name in dir(cli)
        if name.startswith("_")
        and not name.startswith("__")
        and callable(getattr(cli, name))
        and name not in {"_settings", "_period", "_moment"}
    }
    assert reached == defined, f"handlers no command reaches: {defined - reached}"
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
