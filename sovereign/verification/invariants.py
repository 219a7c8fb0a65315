"""The six invariants of DESIGN.md, checked over a history: what the topics carried and what the databases
hold once the system has settled.

Pure: a History is plain data, so a test can hand it a history with a known violation and see it caught.
`sovereign.verification.history` collects one from a running (or stopped) marketplace.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.events import TENANT_STREAM_TYPES
from services.billing.rating import Rate, Usage, run_charge_krw
from services.placement.logic import ACTIVE_STATES, TERMINAL_STATES, JobState

# A cancel honoured at one of these stages ends the job; at "placed" the factory's completion ends it.
CANCELLED_BEFORE_RUN = frozenset({"before_request", JobState.REQUESTED, JobState.QUEUED})
TENANT_TOPICS = (
    "jobs.requested",
    "jobs.placed",
    "jobs.queued",
    "jobs.rejected",
    "jobs.cancelled",
    "jobs.started",
    "usage.reported",
    "jobs.completed",
    "jobs.billed",
    "billing.usage",
)

Row = dict[str, Any]


@dataclass
class DeadLetter:
    topic: str
    headers: dict[str, str]
    payload: bytes


@dataclass
class History:
    # Topic -> event envelopes as JSON objects, in the order read (repeats included).
    events: dict[str, list[Row]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Rows of the services' tables, as dictionaries.
    jobs: list[Row] = field(default_factory=list)
    pools: list[Row] = field(default_factory=list)
    decisions: list[Row] = field(default_factory=list)
    logged_decision_ids: set[str] = field(default_factory=set)
    runs: list[Row] = field(default_factory=list)
    usage_lines: list[Row] = field(default_factory=list)
    charges: list[Row] = field(default_factory=list)
    postings: list[Row] = field(default_factory=list)
    # Service -> outbox rows not yet published.
    outbox_backlog: dict[str, int] = field(default_factory=dict)
    # What `sovereign billing check` found when the history was collected.
    billing_problems: list[str] = field(default_factory=list)
    known_revisions: set[str] = field(default_factory=set)
    # Registered tenant -> the records on its own stream: envelopes as JSON objects, and a record that is not
    # an event a stream carries as {"undecodable": its first bytes}.
    tenant_streams: dict[str, list[Row]] = field(default_factory=dict)

    def distinct(self, topic: str) -> list[Row]:
        """Each event once: a republished event (outbox repair) keeps its source and id."""
        seen: dict[tuple[str, str], Row] = {}
        for event in self.events.get(topic, []):
            seen.setdefault((event["source"], event["id"]), event)
        return list(seen.values())

    def accepted_requests(self) -> list[Row]:
        """The requests the marketplace took on: not one refused as an envelope (another tenant's key, an
        invalid or conflicting resubmission), which leaves its job, if any, as it was."""
        refused = {
            e["data"]["envelope_id"]
            for e in self.distinct("jobs.rejected")
            if e["data"].get("scope") == "envelope" and e["data"].get("envelope_type") == "jobs.requested"
        }
        return [e for e in self.distinct("jobs.requested") if e["id"] not in refused]

    def job_rejections(self) -> list[Row]:
        """The rejections of jobs: not the refusals of a single envelope, which leave the job as it was."""
        return [e for e in self.distinct("jobs.rejected") if e["data"].get("scope", "job") == "job"]


@dataclass(frozen=True)
class Violation:
    invariant: int
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"invariant {self.invariant} [{self.subject}]: {self.detail}"


def check(history: History, expected_dead_letters: int = 0) -> list[Violation]:
    return [
        *terminal_outcomes(history),
        *capacity(history),
        *decisions(history),
        *billing(history),
        *tenant_isolation(history),
        *tenant_streams(history),
        *nothing_lost(history, expected_dead_letters),
    ]


def _by_job(events: Iterable[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for event in events:
        grouped[str(event["data"]["job_id"])].append(event)
    return grouped


def _repeated_effects(history: History, topic: str) -> list[Violation]:
    """Two different events for one run of a job: the same effect happened twice."""
    runs = Counter(_run(e) for e in history.distinct(topic))
    return [
        Violation(1, job_id, f"{count} different {topic} events for run {attempt}")
        for (job_id, attempt), count in sorted(runs.items())
        if count > 1
    ]


def terminal_outcomes(history: History) -> list[Violation]:
    """Invariant 1: every accepted request ends in exactly one terminal outcome, once per run."""
    found: list[Violation] = []
    for topic in ("jobs.placed", "jobs.started", "jobs.completed", "jobs.billed"):
        found += _repeated_effects(history, topic)
    placed = _by_job(history.distinct("jobs.placed"))
    outcomes: dict[str, list[str]] = defaultdict(list)
    for event in history.job_rejections():
        outcomes[str(event["data"]["job_id"])].append("rejected")
    for event in history.distinct("jobs.cancelled"):
        if event["data"]["stage"] in CANCELLED_BEFORE_RUN:
            outcomes[str(event["data"]["job_id"])].append("cancelled")
    decided_again = set(outcomes)  # a failed run followed by a rejection or cancel was retried first
    for event in history.distinct("jobs.completed"):
        data = event["data"]
        job_id, attempt = _run(event)
        retried = any(p["data"].get("attempt", 1) > attempt for p in placed.get(job_id, []))
        if data["status"] == "failed" and (retried or job_id in decided_again):
            continue
        outcomes[job_id].append({"succeeded": "completed"}.get(data["status"], data["status"]))
    states = {row["job_id"]: row["state"] for row in history.jobs}
    for job_id in sorted({str(e["data"]["job_id"]) for e in history.accepted_requests()}):
        ended = outcomes.get(job_id, [])
        if len(ended) != 1:
            found.append(Violation(1, job_id, f"{len(ended)} terminal outcomes on the topics: {ended}"))
        state = states.get(job_id)
        if state not in TERMINAL_STATES:
            found.append(Violation(1, job_id, f"placement holds it in state {state!r}, not a terminal one"))
        elif len(ended) == 1 and ended[0] != state:
            found.append(Violation(1, job_id, f"placement says {state!r}, the topics say {ended[0]!r}"))
    return found


def capacity(history: History) -> list[Violation]:
    """Invariant 2: no pool reserved beyond its size, and reservations equal the jobs holding them."""
    holding: Counter[str] = Counter()
    for job in history.jobs:
        if job["state"] in ACTIVE_STATES and job.get("pool_id"):
            holding[job["pool_id"]] += job["gpu_count"]
    found: list[Violation] = []
    for pool in history.pools:
        pool_id, reserved = pool["pool_id"], pool["reserved_gpus"]
        if reserved < 0:
            found.append(Violation(2, pool_id, f"{reserved} GPUs reserved"))
        if reserved != holding[pool_id]:
            found.append(
                Violation(2, pool_id, f"{reserved} GPUs reserved but its active jobs hold {holding[pool_id]}")
            )
        if holding[pool_id] > pool["total_gpus"] and pool["status"] == "available":
            found.append(
                Violation(2, pool_id, f"active jobs hold {holding[pool_id]} of its {pool['total_gpus']} GPUs")
            )
    return found + _oversubscribed_on_topics(history)


def _run(event: Row) -> tuple[str, int]:
    return str(event["data"]["job_id"]), event["data"].get("attempt", 1)


def _oversubscribed_on_topics(history: History) -> list[Violation]:
    """Runs on a pool at the same time, by the factory's start and completion times, never exceed the
    largest size the pool had (checked at each start)."""
    sizes = {pool["pool_id"]: pool["total_gpus"] for pool in history.pools}
    for update in history.distinct("capacity.updated"):
        if update["data"].get("gpu_count") is not None:
            pool_id = update["data"]["pool_id"]
            sizes[pool_id] = max(sizes.get(pool_id, 0), update["data"]["gpu_count"])
    placed = {_run(e): e["data"] for e in history.distinct("jobs.placed")}
    ends = {_run(e): datetime.fromisoformat(e["time"]) for e in history.distinct("jobs.completed")}
    spans: dict[str, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    for event in history.distinct("jobs.started"):
        data = placed.get(_run(event))
        if data is not None:
            start = datetime.fromisoformat(event["time"])
            spans[data["pool_id"]].append(
                (start, ends.get(_run(event), datetime.max.replace(tzinfo=UTC)), data["gpu_count"])
            )
    found = []
    for pool_id, runs in sorted(spans.items()):
        for start, _, _ in runs:
            busy = sum(gpus for begin, end, gpus in runs if begin <= start < end)
            if pool_id in sizes and busy > sizes[pool_id]:
                found.append(
                    Violation(
                        2, pool_id, f"{busy} GPUs running at {start:%H:%M:%S.%f}, size {sizes[pool_id]}"
                    )
                )
                break
    return found


def decisions(history: History) -> list[Violation]:
    """Invariant 3: every placement rests on a recorded decision that allowed that site under a known
    revision, and the audit log holds that decision."""
    recorded = {row["decision_id"]: row for row in history.decisions}
    found: list[Violation] = []
    for event in history.distinct("jobs.placed"):
        data = event["data"]
        job_id, explanation = str(data["job_id"]), data["explanation"]
        decision_id = str(explanation["decision_id"])
        decision = recorded.get(decision_id)
        if decision is None:
            found.append(Violation(3, job_id, f"placed under decision {decision_id}, which was not recorded"))
            continue
        verdicts = {site["site_id"]: site for site in decision["result"]["sites"]}
        if not verdicts.get(data["site_id"], {}).get("allowed", False):
            found.append(Violation(3, job_id, f"decision {decision_id} did not allow {data['site_id']}"))
        revision = explanation["policy_revision"]
        if revision != decision["policy_revision"] or revision not in history.known_revisions:
            found.append(Violation(3, job_id, f"placed under revision {revision!r}, not a known one"))
        if decision_id not in history.logged_decision_ids:
            found.append(Violation(3, job_id, f"decision {decision_id} is missing from the audit log"))
    return found


def billing(history: History) -> list[Violation]:
    """Invariant 4: each usage event rated exactly once, the ledger balances, invoices recompute."""
    found: list[Violation] = []
    lines = Counter((row["source"], row["event_id"]) for row in history.usage_lines)
    for event in history.distinct("usage.reported"):
        count = lines[(event["source"], event["id"])]
        if count != 1:
            job_id = str(event["data"]["job_id"])
            found.append(Violation(4, job_id, f"usage event {event['id']} rated {count} times"))
    intervals = Counter((row["job_id"], row["attempt"], row["seq"]) for row in history.usage_lines)
    found += [
        Violation(4, job_id, f"interval {seq} of run {attempt} rated {count} times")
        for (job_id, attempt, seq), count in sorted(intervals.items())
        if count > 1
    ]
    transactions: Counter[str] = Counter()
    for posting in history.postings:
        transactions[posting["transaction_id"]] += posting["amount_krw"]
    found += [
        Violation(4, transaction, f"postings sum to {total} KRW, not 0")
        for transaction, total in sorted(transactions.items())
        if total != 0
    ]
    billed = Counter(_run(e) for e in history.distinct("jobs.billed"))
    for event in history.distinct("jobs.completed"):
        run = _run(event)
        if billed[run] != 1:
            found.append(Violation(4, run[0], f"run {run[1]} completed and was billed {billed[run]} times"))
    found += bills_unequal_to_usage(history)
    return found + [Violation(4, "billing check", problem) for problem in history.billing_problems]


def bills_unequal_to_usage(history: History) -> list[Violation]:
    """Invariant 4, from the topics alone: each run's bill equals its reported usage at the prices locked
    when it was placed (per GPU-hour, or per token)."""
    placed = {_run(e): e["data"] for e in history.distinct("jobs.placed")}
    usage: dict[tuple[str, int], Usage] = defaultdict(Usage)
    for event in history.distinct("usage.reported"):
        data = event["data"]
        tokens = data.get("input_tokens", 0), data.get("output_tokens", 0)
        usage[_run(event)] += Usage(data["gpu_seconds"], *tokens)
    found: list[Violation] = []
    for event in history.distinct("jobs.billed"):
        run, amount = _run(event), event["data"]["amount_krw"]
        run_placed = placed.get(run)
        if run_placed is None:
            found.append(Violation(4, run[0], f"run {run[1]} was billed but never placed"))
            continue
        rate = Rate(
            run_placed["price_krw_per_gpu_hour"],
            run_placed.get("price_krw_per_million_input_tokens"),
            run_placed.get("price_krw_per_million_output_tokens"),
        )
        expected = run_charge_krw(usage[run], rate)
        if amount != expected:
            detail = f"run {run[1]} billed {amount} KRW; its usage at the locked prices is {expected} KRW"
            found.append(Violation(4, run[0], detail))
    return found


def tenant_isolation(history: History) -> list[Violation]:
    """Invariant 5, on the shared topics: every event about a tenant names that tenant as its subject."""
    return [
        Violation(
            5,
            str(event["id"]),
            f"{topic} event for {event['data']['tenant_id']!r} has subject {event['subject']!r}",
        )
        for topic in TENANT_TOPICS
        for event in history.distinct(topic)
        if event["subject"] != event["data"].get("tenant_id", event["subject"])
    ]


def tenant_streams(history: History) -> list[Violation]:
    """Invariants 5 and 6 on the tenants' own streams (all a tenant may read): each carries only events about
    its tenant, and every event the marketplace told a registered tenant, or relayed to it from a factory, is
    on that tenant's stream too."""
    found: list[Violation] = []
    streamed: dict[str, set[tuple[str, str]]] = {}
    for tenant, records in sorted(history.tenant_streams.items()):
        streamed[tenant] = set()
        for record in records:
            if "undecodable" in record:
                found.append(
                    Violation(5, tenant, f"its stream carries a record that is no tenant's event: {record}")
                )
            elif record["data"].get("tenant_id") != tenant or record["subject"] != tenant:
                found.append(
                    Violation(
                        5,
                        tenant,
                        f"its stream carries {record['type']} {record['id']} about "
                        f"{record['data'].get('tenant_id')!r} (subject {record['subject']!r})",
                    )
                )
            else:
                streamed[tenant].add((record["source"], record["id"]))
    for topic in sorted(TENANT_STREAM_TYPES):
        for event in history.distinct(topic):
            tenant = event["data"]["tenant_id"]
            if tenant in streamed and (event["source"], event["id"]) not in streamed[tenant]:
                subject = str(event["data"].get("job_id", tenant))
                found.append(Violation(6, subject, f"{topic} {event['id']} never reached {tenant}'s stream"))
    return found


def nothing_lost(history: History, expected_dead_letters: int) -> list[Violation]:
    """Invariant 6: every effect in a database reached its topic, and nothing else went astray."""
    found = [
        Violation(6, service, f"{count} outbox rows never published")
        for service, count in sorted(history.outbox_backlog.items())
        if count
    ]
    placed = {_run(e) for e in history.distinct("jobs.placed")}
    started = {_run(e) for e in history.distinct("jobs.started")}
    rejected = {str(e["data"]["job_id"]) for e in history.job_rejections()}
    for job in history.jobs:
        if job.get("pool_id") and (job["job_id"], job["attempt"]) not in placed:
            found.append(
                Violation(6, job["job_id"], f"placed (run {job['attempt']}) but no jobs.placed event")
            )
        if job["state"] == "rejected" and job["job_id"] not in rejected:
            found.append(Violation(6, job["job_id"], "rejected but no jobs.rejected event"))
    # A run accepted at a factory starts when its backend says so (one cancelled first never does).
    for run in history.runs:
        if run["started_reported"] and (run["job_id"], run["attempt"]) not in started:
            found.append(
                Violation(6, run["job_id"], f"run {run['attempt']} started but no jobs.started event")
            )
    billed = {_run(e) for e in history.distinct("jobs.billed")}
    for charge in history.charges:
        if charge["billed"] and (charge["job_id"], charge["attempt"]) not in billed:
            found.append(
                Violation(6, charge["job_id"], f"run {charge['attempt']} billed but no jobs.billed event")
            )
    if len(history.dead_letters) != expected_dead_letters:
        errors = Counter(letter.headers.get("dlq-error-type", "?") for letter in history.dead_letters)
        found.append(
            Violation(
                6,
                "dead letters",
                f"{len(history.dead_letters)} dead-lettered, {expected_dead_letters} expected: "
                f"{dict(errors)}",
            )
        )
    return found
