"""What lever 5 of issue 18 (one multi-row statement per table per batch) would save: the cost per event of
the statements every consumed event runs (its inbox claim, its outbox row, its savepoint), one statement per
event against one per batch of BATCH events, on SQLite and on PostgreSQL, in one run.

    .venv/bin/python -m bench.statements
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Session

from services.shared.db import create_service_engine, table_of, unit_of_work, upsert_insert, utc_now
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from sovereign.stack.postgres import LocalPostgres

BATCH = 50
BATCHES = 40
PAYLOAD = b"x" * 1500  # about a usage-rated event


def _claim(event_id: str) -> dict[str, Any]:
    return {"consumer": "bench", "source": "bench", "event_id": event_id, "processed_at": utc_now()}


def _outbox_row() -> dict[str, Any]:
    return {
        "topic": "usage.rated",
        "also_to": None,
        "key": "k",
        "payload": PAYLOAD,
        "headers": {"event_id": str(uuid.uuid4())},
        "created_at": utc_now(),
    }


def _per_event_us(engine: Engine, apply_batch: Callable[[Session, list[str]], None]) -> float:
    """Microseconds per event of `apply_batch` over BATCHES batches, each in its own transaction."""
    spent = 0.0
    for _ in range(BATCHES):
        ids = [str(uuid.uuid4()) for _ in range(BATCH)]
        with unit_of_work(engine) as session:
            session.connection()  # the transaction's BEGIN is not the statements' cost
            started = time.perf_counter()
            apply_batch(session, ids)
            session.flush()
            spent += time.perf_counter() - started
    return spent / (BATCHES * BATCH) * 1e6


def measure(engine: Engine) -> dict[str, float]:
    inbox, outbox = table_of(ProcessedEvent), table_of(OutboxMessage)
    with unit_of_work(engine) as session:
        claim_statement = upsert_insert(session)(inbox).on_conflict_do_nothing().returning(*inbox.primary_key)
    outbox_statement = insert(outbox)

    def claims_one_by_one(session: Session, ids: list[str]) -> None:
        for event_id in ids:
            session.execute(claim_statement, _claim(event_id)).first()

    def claims_in_one(session: Session, ids: list[str]) -> None:
        session.execute(claim_statement, [_claim(event_id) for event_id in ids]).all()

    def outbox_one_by_one(session: Session, ids: list[str]) -> None:
        for _ in ids:
            session.execute(outbox_statement, _outbox_row())

    def outbox_in_one(session: Session, ids: list[str]) -> None:
        session.execute(outbox_statement, [_outbox_row() for _ in ids])

    def savepoints(session: Session, ids: list[str]) -> None:
        for _ in ids:
            with session.begin_nested():
                pass

    return {
        "inbox claim, a statement per event": _per_event_us(engine, claims_one_by_one),
        f"inbox claim, one statement per {BATCH} events": _per_event_us(engine, claims_in_one),
        "outbox row, a statement per event": _per_event_us(engine, outbox_one_by_one),
        f"outbox row, one statement per {BATCH} events": _per_event_us(engine, outbox_in_one),
        "savepoint per event (begin and release)": _per_event_us(engine, savepoints),
    }


def main() -> None:
    tables = [table_of(ProcessedEvent), table_of(OutboxMessage)]
    with tempfile.TemporaryDirectory() as directory:
        sqlite = measure(create_service_engine(f"sqlite:///{Path(directory) / 'b.db'}", "bench", tables))
    server = LocalPostgres()
    server.start()
    try:
        engine = create_service_engine(server.url, "bench", tables)
        postgres = measure(engine)
        engine.dispose()
    finally:
        server.stop()
    print(f"{'µs per event':<48} {'SQLite':>8} {'PostgreSQL':>11}")
    for name, value in sqlite.items():
        print(f"{name:<48} {value:>8.1f} {postgres[name]:>11.1f}")


if __name__ == "__main__":
    main()
