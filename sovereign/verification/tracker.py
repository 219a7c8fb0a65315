"""Folds the event streams into one trace per job, as a tenant or an auditor reading the topics would."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from contracts import TOPICS, AnyEvent
from contracts.events import (
    BudgetThresholdCrossed,
    CapacityOffered,
    InvoiceIssued,
    JobBilled,
    JobCancelled,
    JobCompleted,
    JobPlaced,
    JobQueued,
    JobRejected,
    JobRequest,
    JobStarted,
    PolicyDecisionRecord,
    UsageRated,
    UsageReported,
)
from sovereign.verification.watch import EventWatcher


@dataclass
class JobTrace:
    requests: list[JobRequest] = field(default_factory=list)
    placed: list[JobPlaced] = field(default_factory=list)
    queued: list[JobQueued] = field(default_factory=list)
    rejected: list[JobRejected] = field(default_factory=list)
    # Envelopes about the job that were refused (an invalid request, a conflicting resubmission, a cancel
    # that could not apply): the job is as it was.
    refused: list[JobRejected] = field(default_factory=list)
    started: list[JobStarted] = field(default_factory=list)
    usage: list[UsageReported] = field(default_factory=list)
    completed: list[JobCompleted] = field(default_factory=list)
    rated: list[UsageRated] = field(default_factory=list)
    billed: list[JobBilled] = field(default_factory=list)
    cancelled: list[JobCancelled] = field(default_factory=list)

    @property
    def attempt(self) -> int:
        """The latest run placed (0 before any placement)."""
        return max((p.attempt for p in self.placed), default=0)

    def _latest(self, events: list[JobStarted] | list[JobCompleted] | list[JobBilled]) -> bool:
        return any(e.attempt == self.attempt for e in events)

    @property
    def retry_pending(self) -> bool:
        """The latest run failed and the job allows another: placement will place, queue or reject it."""
        failed = any(c.attempt == self.attempt and c.status == "failed" for c in self.completed)
        allowed = self.requests[0].max_attempts if self.requests else 1
        return failed and self.attempt < allowed and not self.rejected

    @property
    def terminal(self) -> str | None:
        """A job ends rejected, cancelled before it was placed, or billed once its last run ended (even if
        cancelled while running); a placed job that is not yet billed, or awaits a retry, has not ended."""
        if self.rejected:
            return "rejected"
        if self._latest(self.billed) and not self.retry_pending:
            return "billed"
        if self.cancelled and not self.placed:
            return "cancelled"
        return None

    @property
    def state(self) -> str:
        # A job cancelled while running is "cancelled" only once its usage until then is billed.
        if self.cancelled and (not self.placed or self._latest(self.billed)):
            return "cancelled"
        if self.rejected:
            return "rejected"
        if self.retry_pending:
            return "retrying"
        failed = any(c.attempt == self.attempt and c.status == "failed" for c in self.completed)
        for name, reached in (
            ("failed" if failed else "billed", self._latest(self.billed)),
            ("completed", self._latest(self.completed)),
            ("running", self._latest(self.started)),
            ("placed", bool(self.placed)),
            ("queued", bool(self.queued)),
        ):
            if reached:
                return name
        return "requested"


@dataclass
class Tracker:
    jobs: dict[uuid.UUID, JobTrace] = field(default_factory=dict)
    decisions: dict[uuid.UUID, PolicyDecisionRecord] = field(default_factory=dict)
    subjects_mismatched: list[str] = field(default_factory=list)
    # At-least-once delivery: a consumer recognises a repeat by its (source, id) and ignores it.
    seen: set[tuple[str, uuid.UUID]] = field(default_factory=set)
    duplicates: int = 0
    sites_offered: set[str] = field(default_factory=set)
    invoices: list[InvoiceIssued] = field(default_factory=list)
    budget_alerts: list[BudgetThresholdCrossed] = field(default_factory=list)
    # Set while `following` feeds it: whether it has recorded everything the topics hold now.
    caught_up: Callable[[], Awaitable[bool]] | None = None

    def trace(self, job_id: uuid.UUID) -> JobTrace:
        return self.jobs.setdefault(job_id, JobTrace())

    def record(self, event: AnyEvent) -> None:
        if (event.source, event.id) in self.seen:
            self.duplicates += 1
            return
        self.seen.add((event.source, event.id))
        data = event.data
        tenant = getattr(data, "tenant_id", None)
        if tenant is not None and tenant != event.subject:
            self.subjects_mismatched.append(
                f"{event.type} {event.id}: subject {event.subject}, tenant {tenant}"
            )
        match data:
            case CapacityOffered():
                self.sites_offered.add(data.site.site_id)
            case InvoiceIssued():
                self.invoices.append(data)
            case BudgetThresholdCrossed():
                self.budget_alerts.append(data)
            case PolicyDecisionRecord():
                self.decisions[data.decision_id] = data
            case JobRequest():
                self.trace(data.job_id).requests.append(data)
            case JobPlaced():
                self.trace(data.job_id).placed.append(data)
            case JobQueued():
                self.trace(data.job_id).queued.append(data)
            case JobRejected(scope="envelope"):
                self.trace(data.job_id).refused.append(data)
            case JobRejected():
                self.trace(data.job_id).rejected.append(data)
            case JobStarted():
                self.trace(data.job_id).started.append(data)
            case UsageReported():
                self.trace(data.job_id).usage.append(data)
            case JobCompleted():
                self.trace(data.job_id).completed.append(data)
            case UsageRated():
                self.trace(data.job_id).rated.append(data)
            case JobBilled():
                self.trace(data.job_id).billed.append(data)
            case JobCancelled():
                self.trace(data.job_id).cancelled.append(data)

    def states(self, job_ids: set[uuid.UUID]) -> Counter[str]:
        return Counter(self.trace(job_id).state for job_id in job_ids)

    def all_terminal(self, job_ids: set[uuid.UUID]) -> bool:
        return all(self.trace(job_id).terminal for job_id in job_ids)


@contextlib.asynccontextmanager
async def following(bootstrap_servers: str, tracker: Tracker) -> AsyncIterator[Tracker]:
    """Feed every event on the flow's topics, from the beginning, into the tracker until the block ends."""
    async with EventWatcher(bootstrap_servers, list(TOPICS), from_beginning=True) as watcher:

        async def pump() -> None:
            async for batch in watcher.events(poll_ms=100):
                for event in batch:
                    tracker.record(event)

        task = asyncio.create_task(pump())
        tracker.caught_up = watcher.caught_up
        try:
            yield tracker
        finally:
            tracker.caught_up = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(condition: object, within: float, interval: float = 0.1) -> bool:
    """Poll a no-argument callable until it is true or `within` seconds pass."""
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return bool(condition())
