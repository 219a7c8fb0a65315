"""`sovereign attest verify`: check the marketplace's placement attestations offline, from the jobs.placed
events alone and the keyring: one event in a file, a month of them, or the whole topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from contracts.events import JobPlacedEvent
from services.shared.domain.attestation import placement_attestation_failure
from services.shared.domain.money import period_of
from services.shared.domain.signing import Keyring
from services.shared.kafka import transport_security
from services.shared.settings import Settings
from sovereign.options import Commands, connection_options, period, settings_of
from sovereign.verification.watch import read_records


def read_placements(path: Path) -> list[JobPlacedEvent]:
    """One jobs.placed event (a JSON object) or many (JSON lines); '-' reads standard input."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    stripped = text.strip()
    if stripped.startswith("{") and "\n{" not in stripped:
        return [JobPlacedEvent.model_validate_json(stripped)]
    return [JobPlacedEvent.model_validate_json(line) for line in stripped.splitlines() if line.strip()]


async def placements_on_topic(settings: Settings) -> list[JobPlacedEvent]:
    records = await read_records(
        settings.bootstrap_servers, ["jobs.placed"], security=transport_security(settings)
    )
    return [JobPlacedEvent.model_validate_json(r.value or b"") for r in records]


def verify_placements(events: Iterable[JobPlacedEvent], keyring: Keyring, month: str | None) -> int:
    """Print each placement that fails and a summary; 0 when every one (of the month, if given) verifies."""
    checked = failed = 0
    for event in events:
        placed = event.data
        claim = placed.attestation.claim if placed.attestation else None
        moment = claim.placed_at if claim else event.time
        if month is not None and period_of(moment) != month:
            continue
        checked += 1
        failure = placement_attestation_failure(placed, keyring)
        if failure is not None:
            failed += 1
            print(f"FAIL  job {placed.job_id} run {placed.attempt} at {placed.site_id}: {failure}")
    scope = f" placed in {month} (KST)" if month else ""
    print(f"{checked - failed} of {checked} placements{scope} verified; {failed} failed")
    return 1 if failed or checked == 0 else 0


async def attest_verify(
    path: Path | None, keyring_path: Path | None, month: str | None, settings: Settings
) -> int:
    keyring_file = keyring_path or settings.keyring_path
    if keyring_file is None:
        print("error: give --keyring (or SOVEREIGN_KEYRING): the marketplace's public keys", file=sys.stderr)
        return 2
    try:
        keyring = Keyring.load(keyring_file)
        events = read_placements(path) if path is not None else await placements_on_topic(settings)
    except (OSError, ValueError, ValidationError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return verify_placements(events, keyring, month)


def register(commands: Commands) -> None:
    attest = commands.add_parser("attest", help="the marketplace's placement attestations").add_subparsers(
        dest="attest_command", required=True
    )
    verify = attest.add_parser(
        "verify", help="check placement attestations offline, from jobs.placed events and the public keys"
    )
    verify.add_argument(
        "events",
        nargs="?",
        help="a jobs.placed event (JSON) or many (JSON lines), '-' for stdin; none: the topic",
    )
    verify.add_argument("--keyring", help="the keyring holding the marketplace's key (env SOVEREIGN_KEYRING)")
    verify.add_argument("--month", type=period, help="only the placements of this month (YYYY-MM, KST)")
    connection_options(verify)
    verify.set_defaults(handler=_attest_verify)


def _attest_verify(args: argparse.Namespace) -> int:
    events = Path(args.events) if args.events else None
    keyring = Path(args.keyring) if args.keyring else None
    return asyncio.run(attest_verify(events, keyring, args.month, settings_of(args)))
