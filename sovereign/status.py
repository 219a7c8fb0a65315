"""`sovereign status`: each service's workers (ready, starting, stopped or down), its consumer lag per topic,
its outbox backlog and its dead letters. Exit 0 when every service asked about has a ready worker."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlmodel import select

from contracts import TOPICS, dead_letter_topic
from services.registry import SERVICES
from services.shared.db import as_utc, table_of, utc_now
from services.shared.health import WorkerRow, recent_workers, worker_state
from services.shared.kafka import consumer_group, transport_security
from services.shared.outbox import OutboxMessage
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
    outbox_backlog: int = 0
    dead_letters: int = 0

    @property
    def ready(self) -> bool:
        return any(worker.state == "ready" for worker in self.workers)


async def collect_status(
    settings: Settings, services: tuple[str, ...] = SERVICE_NAMES, host: str | None = None
) -> list[ServiceStatus]:
    """host: count only the workers on that host (a container's own health check)."""
    now = utc_now()
    report: list[ServiceStatus] = []
    groups: dict[str, list[str]] = {}
    for service in services:
        status = ServiceStatus(service)
        with service_session(settings, service, [table_of(OutboxMessage), table_of(WorkerRow)]) as session:
            rows = [row for row in recent_workers(session) if host is None or row.host == host]
            status.outbox_backlog = session.exec(select(func.count()).select_from(OutboxMessage)).one()
        status.workers = [
            WorkerStatus(
                row.worker_id, worker_state(row, now), (now - as_utc(row.heartbeat_at)).total_seconds()
            )
            for row in rows
        ]
        status.lag = {topic: 0 for row in rows for topic in row.topics}
        groups[consumer_group(service)] = list(status.lag)
        report.append(status)
    security = transport_security(settings)
    lag = await lag_by_group(settings.bootstrap_servers, groups, security)
    letters = each_record(
        settings.bootstrap_servers, [dead_letter_topic(t) for t in TOPICS], security=security
    )
    by_consumer = Counter(
        [dict(record.headers or ()).get("dlq-consumer", b"").decode() async for record in letters]
    )
    for status in report:
        status.lag = lag[consumer_group(status.service)]
        status.dead_letters = by_consumer[status.service]
    return report


def render_status(report: list[ServiceStatus]) -> str:
    lines = []
    for status in report:
        live = [w for w in status.workers if w.state != "stopped"]
        lines.append(
            f"{status.service:<14} {'ready' if status.ready else 'NOT READY':<10} "
            f"lag {sum(status.lag.values()):>6}  outbox {status.outbox_backlog:>5}  "
            f"dead letters {status.dead_letters}"
        )
        for worker in live or status.workers[:1]:
            lines.append(
                f"    {worker.worker_id:<40} {worker.state:<9} "
                f"heartbeat {worker.seconds_since_heartbeat:.0f} s ago"
            )
        lagging = {topic: n for topic, n in status.lag.items() if n}
        if lagging:
            lines.append("    lag by topic: " + ", ".join(f"{t} {n}" for t, n in sorted(lagging.items())))
    return "\n".join(lines)


def status_command(settings: Settings, service: str | None, this_host_only: bool) -> int:
    host = socket.gethostname() if this_host_only else None
    report = asyncio.run(collect_status(settings, (service,) if service else SERVICE_NAMES, host))
    print(render_status(report))
    return 0 if all(status.ready for status in report) else 1
