"""The `sovereign` command itself: the embedded broker it starts is usable and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import TOPICS, dead_letter_topic
from services.shared.settings import REPO_ROOT
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


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    for command in ("demo", "run placement", "submit job.json", "broker", "contracts"):
        assert parser.parse_args(command.split()).handler is not None
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "no-such-service"])
