"""`sovereign status`: each service's workers (ready, starting, stopped or down), its consumer lag per topic,
its outbox backlog, the records it keeps for their turns, what its outbox set aside and its dead letters.
Exit 0 when every service asked about is ready: a ready worker, nothing set aside, and no outbox or kept
record waiting past OUTBOX_STALE_AFTER."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, select

from contracts import TOPICS, dead_letter_topic
from services.registry import SERVICES
from services.shared.arrivals import ArrivalRow
from services.shared.db import as_utc, table_of, utc_now
from services.shared.health import OUTBOX_STALE_AFTER, WorkerRow, recent_workers, worker_state
from services.shared.kafka import consumer_group, transport_security
from services.shared.outbox import OUTBOX_TABLES, OutboxMessage, OutboxSetAside
from services.shared.settings import Settings
from sovereign.verification.databases import service_session
from sovereign.verification.watch import each_record, lag_by_group

SERVICE_NAMES = tuple(SERVICES)


@dataclass
class WorkerStatus:
    worker_id: str
    state: str
    seconds_since_heartbeat: float


@dataclass
class ServiceStatus:
    service: str
    workers: list[WorkerStatus] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    # The consumer groups its workers read in: one, or one per factory whose agent serves its own sites.
    groups: list[str] = field(default_factory=list)
    outbox_backlog: int = 0
    # How long the oldest row still in the outbox has waited to be published.
    oldest_pending_seconds: float | None = None
    # Rows the broker refused for good, by topic, with the last reason given.
    set_aside: dict[str, tuple[int, str]] = field(default_factory=dict)
    dead_letters: int = 0
    # Records consumed and kept for their turns (arrivals.py), not yet handled: not lag, yet not answered.
    kept: int = 0
    oldest_kept_seconds: float | None = None

    @property
    def not_ready_because(self) -> list[str]:
        """Why the service is not ready, or nothing when it is."""
        reasons = [] if any(w.state == "ready" for w in self.workers) else ["no worker is ready"]
        for topic, (count, reason) in sorted(self.set_aside.items()):
            reasons.append(f"{count} record(s) for {topic} set aside: {reason}")
        bound = OUTBOX_STALE_AFTER.total_seconds()
        if self.oldest_pending_seconds is not None and self.oldest_pending_seconds > bound:
            waited = self.oldest_pending_seconds
            reasons.append(f"the oldest outbox record has waited {waited:.0f} s (more than {bound:.0f})")
        if self.oldest_kept_seconds is not None and self.oldest_kept_seconds > bound:
            waited = self.oldest_kept_seconds
            reasons.append(
                f"the oldest kept record has waited {waited:.0f} s for its turn (more than {bound:.0f})"
            )
        return reasons

    @property
    def ready(self) -> bool:
        return not self.not_ready_because


async def collect_status(
    settings: Settings, services: tuple[str, ...] = SERVICE_NAMES, host: str | None = None
) -> list[ServiceStatus]:
    """host: count only the workers on that host (a container's own health check)."""
    now = utc_now()
    report: list[ServiceStatus] = []
    groups: dict[str, set[str]] = {}
    for service in services:
        status = ServiceStatus(service)
        keeps = table_of(ArrivalRow) in SERVICES[service].tables
        tables = [*OUTBOX_TABLES, table_of(WorkerRow), *([table_of(ArrivalRow)] if keeps else [])]
        with service_session(settings, service, tables) as session:
            rows = [row for row in recent_workers(session) if host is None or row.host == host]
            backlog, oldest = session.exec(
                select(func.count(), func.min(OutboxMessage.created_at)).select_from(OutboxMessage)
            ).one()
            status.outbox_backlog = backlog
            status.oldest_pending_seconds = _seconds_since(now, oldest)
            status.set_aside = set_aside_by_topic(session)
            if keeps:
                kept, oldest_kept = session.exec(
                    select(func.count(), func.min(ArrivalRow.arrived_at)).select_from(ArrivalRow)
                ).one()
                status.kept = kept
                status.oldest_kept_seconds = (
                    None if oldest_kept is None else (now - as_utc(oldest_kept)).total_seconds()
                )
        status.workers = [
            WorkerStatus(
                row.worker_id, worker_state(row, now), (now - as_utc(row.heartbeat_at)).total_seconds()
            )
            for row in rows
        ]
        for row in rows:
            group = row.consumer_group or consumer_group(
                service
            )  # a worker that did not say reads in the service's
            groups.setdefault(group, set()).update(row.topics)
            status.groups.append(group)
        status.groups = sorted(set(status.groups))
        report.append(status)
    security = transport_security(settings)
    lag = await lag_by_group(
        settings.bootstrap_servers, {group: sorted(topics) for group, topics in groups.items()}, security
    )
    letters = each_record(
        settings.bootstrap_servers, [dead_letter_topic(t) for t in TOPICS], security=security
    )
    by_consumer = Counter(
        [dict(record.headers or ()).get("dlq-consumer", b"").decode() async for record in letters]
    )
    for status in report:
        # Each topic's lag in the group furthest behind (agents for different sites each read everything).
        status.lag = {
            topic: max(lag[group].get(topic, 0) for group in status.groups if topic in groups[group])
            for topic in sorted({topic for group in status.groups for topic in groups[group]})
        }
        status.dead_letters = by_consumer[status.service]
    return report


def _seconds_since(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - as_utc(then)).total_seconds()


def set_aside_by_topic(session: Session) -> dict[str, tuple[int, str]]:
    """How many rows the broker refused for good, by topic, and the reason of the last one."""
    counts = session.exec(
        select(OutboxSetAside.topic, func.count(), func.max(OutboxSetAside.id)).group_by(OutboxSetAside.topic)
    ).all()
    return {
        topic: (count, session.get(OutboxSetAside, last).reason)  # type: ignore[union-attr]
        for topic, count, last in counts
    }


def render_status(report: list[ServiceStatus]) -> str:
    lines = []
    for status in report:
        live = [w for w in status.workers if w.state != "stopped"]
        lines.append(
            f"{status.service:<14} {'ready' if status.ready else 'NOT READY':<10} "
            f"lag {sum(status.lag.values()):>6}  outbox {status.outbox_backlog:>5}  "
            f"dead letters {status.dead_letters}" + (f"  kept {status.kept}" if status.kept else "")
        )
        for worker in live or status.workers[:1]:
            lines.append(
                f"    {worker.worker_id:<40} {worker.state:<9} "
                f"heartbeat {worker.seconds_since_heartbeat:.0f} s ago"
            )
        for reason in status.not_ready_because:
            lines.append(f"    not ready: {reason}")
        lagging = {topic: n for topic, n in status.lag.items() if n}
        if lagging:
            lines.append("    lag by topic: " + ", ".join(f"{t} {n}" for t, n in sorted(lagging.items())))
    return "\n".join(lines)


def status_command(settings: Settings, service: str | None, this_host_only: bool) -> int:
    host = socket.gethostname() if this_host_only else None
    report = asyncio.run(collect_status(settings, (service,) if service else SERVICE_NAMES, host))
    print(render_status(report))
    return 0 if all(status.ready for status in report) else 1
