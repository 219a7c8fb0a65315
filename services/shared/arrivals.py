"""Records from outside parties, kept as they arrive and handled in turns, one lane after another.

A topic's partition is a queue: whatever one party writes ahead of another's record is read first. Reading,
checking the signature of and handling a large request costs milliseconds, so a tenant's flood of them ahead
of another tenant's request used to cost that request seconds. The consumer now only keeps such records
(tens of microseconds each, no parse of the whole) with the lane they claim (the envelope's subject: the
tenant), and turns handle them: each lane's oldest, the lanes in the order of their oldest record, round
after round, for at most TURN_ALLOWANCE_MS a transaction. So a flood costs another lane's record one turn.

The lane is only claimed, not proved: a forger who claims a victim's lane delays that lane alone (each forged
record is refused in its turn), where before it delayed everyone.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, LargeBinary, bindparam, delete, func, insert
from sqlmodel import Field, Session, SQLModel, col, select

from services.shared.batch import Record
from services.shared.db import table_of, utc_now

# What a turn may spend, and how many kept records it reads to choose from. The consumer fetches only
# between two turns, so a record not yet kept waits for the turn under way: at 50 ms another tenant's
# request waited 150 ms on average to be kept during a flood, at 10 ms 50 to 100 ms.
TURN_ALLOWANCE_MS = 10.0
TURN_SCAN = 500
# How many of one lane's records a turn reads at most (a turn rarely handles more of one lane).
LANE_SHARE = 16
LANE_LENGTH = 200


class ArrivalRow(SQLModel, table=True):
    """A consumed record kept for its turn, as the broker gave it."""

    __tablename__ = "arrivals"

    id: int | None = Field(default=None, primary_key=True)
    lane: str = Field(max_length=LANE_LENGTH, index=True)
    topic: str = Field(max_length=200)
    partition: int
    record_offset: int = Field(sa_column=Column(BigInteger, nullable=False))
    key: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: list[list[str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    arrived_at: datetime = Field(default_factory=utc_now)


ARRIVAL_TABLES = [table_of(ArrivalRow)]


@dataclass(frozen=True)
class KeptRecord:
    """A kept record, read back with the attributes of the consumed record it was."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def claimed_subject(value: bytes) -> str:
    """The envelope's `subject`, read without checking anything else ("" when there is none to read)."""
    try:
        subject = json.loads(value).get("subject")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return subject[:LANE_LENGTH] if isinstance(subject, str) else ""


def keep(session: Session, records: Sequence[Record]) -> set[str]:
    """Keep the records for their turns, in the order consumed, each in the lane it claims; returns the
    lanes (for Turns.noticed)."""
    lanes = [claimed_subject(record.value or b"") for record in records]
    session.execute(
        insert(table_of(ArrivalRow)),
        [
            {
                "lane": lane,
                "topic": record.topic,
                "partition": record.partition,
                "record_offset": record.offset,
                "key": record.key,
                "value": record.value or b"",
                "headers": [[name, value.decode("utf-8", "replace")] for name, value in record.headers or ()],
                "arrived_at": utc_now(),
            }
            for lane, record in zip(lanes, records, strict=True)
        ],
    )
    return set(lanes)


class Turns:
    """Turns over the kept records that start with the lanes served longest ago (a lane never served first),
    so a lane whose record takes a whole turn cannot keep the others waiting: each lane's oldest, the lanes
    in that order, round after round, within the allowance.

    The order read from the kept records lasts across turns until it is spent or a lane it lacks is
    noticed (that lane then goes first): reading it costs milliseconds when many are kept, and a turn is
    short so that the consumer fetches often."""

    def __init__(
        self, allowance_ms: float = TURN_ALLOWANCE_MS, timer: Callable[[], float] = time.perf_counter
    ):
        self._allowance_ms = allowance_ms
        self._timer = timer
        self._served: dict[str, int] = {}  # lane -> the number of the last record handled from it
        self._handled = 0
        self._order: deque[tuple[int, str]] = deque()  # what is left of the order last read: (id, lane)
        self._unordered: set[str] = set()  # lanes kept in since, that the order lacks

    def noticed(self, lanes: set[str]) -> None:
        """Records were kept in these lanes: one the order lacks has the order read again at the next turn."""
        self._unordered |= lanes - {lane for _, lane in self._order}

    def take(self, session: Session, handle: Callable[[Session, KeptRecord], None]) -> int:
        """Handle kept records until the allowance is spent, each removed as it is handled (in the same
        transaction). Returns how many were handled: 0 when none was kept (or others took them)."""
        started, handled, read = self._timer(), 0, False
        try:
            while True:
                if not self._order or self._unordered:
                    if read:
                        break  # the order is read at most once a turn
                    self._order, read = deque(self._in_turns(session)), True
                    self._unordered.clear()
                    if not self._order:
                        break
                arrival_id, lane = self._order.popleft()
                if not self._handle_one(session, arrival_id, handle):
                    continue
                handled += 1
                self._handled += 1
                self._served[lane] = self._handled
                if (self._timer() - started) * 1000 >= self._allowance_ms:
                    break
        except BaseException:
            self._order.clear()  # the transaction is undone: what it took is kept again, to be read again
            raise
        return handled

    @staticmethod
    def _handle_one(session: Session, arrival_id: int, handle: Callable[[Session, KeptRecord], None]) -> bool:
        # Locked, or skipped if another worker is handling it (PostgreSQL's SKIP LOCKED).
        row = session.get(ArrivalRow, arrival_id, with_for_update={"skip_locked": True})
        if row is None:
            return False
        record = KeptRecord(
            topic=row.topic,
            partition=row.partition,
            offset=row.record_offset,
            key=row.key,
            value=row.value,
            headers=tuple((name, value.encode()) for name, value in row.headers),
        )
        session.expunge(row)
        session.execute(delete(ArrivalRow).where(col(ArrivalRow.id) == arrival_id))
        handle(session, record)
        return True

    def _in_turns(self, session: Session) -> list[tuple[int, str]]:
        lanes: dict[str, list[int]] = {}
        params = {"share": LANE_SHARE, "limit": TURN_SCAN}
        for arrival_id, lane in session.execute(_EACH_LANES_OLDEST, params):
            lanes.setdefault(lane, []).append(arrival_id)  # in id order: each lane's in the order they came
        self._served = {lane: self._served[lane] for lane in lanes if lane in self._served}
        order = sorted(lanes, key=lambda lane: (self._served.get(lane, 0), lanes[lane][0]))
        rounds = max(map(len, lanes.values()), default=0)
        return [
            (lanes[lane][turn], lane) for turn in range(rounds) for lane in order if turn < len(lanes[lane])
        ]


# Each lane's oldest LANE_SHARE records, all lanes in id order: however many records one lane has kept, the
# others' are read for the turn.
_BY_LANE = select(
    col(ArrivalRow.id).label("id"),
    col(ArrivalRow.lane).label("lane"),
    func.row_number().over(partition_by=col(ArrivalRow.lane), order_by=col(ArrivalRow.id)).label("place"),
).subquery()
_EACH_LANES_OLDEST = (
    select(_BY_LANE.c.id, _BY_LANE.c.lane)
    .where(_BY_LANE.c.place <= bindparam("share"))
    .order_by(_BY_LANE.c.id)
    .limit(bindparam("limit"))
)
