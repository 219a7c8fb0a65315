"""The invariant checker catches each kind of violation in a hand-made history, and passes a clean one;
worker health as `sovereign status` reports it."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.events import TENANT_STREAM_TYPES
from services.shared.health import STALE_AFTER, WorkerRow, worker_state
from sovereign.verification.invariants import DeadLetter, History, check

JOB = str(uuid.uuid4())
DECISION = str(uuid.uuid4())
REVISION = "rev-1"


def event(
    topic: str, time: str = "2026-11-22T01:00:00Z", source: str = "service/x", **data: Any
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": topic,
        "source": source,
        "subject": data.get("tenant_id", "mois"),
        "time": time,
        "data": {"job_id": JOB, "tenant_id": "mois", **data},
    }


def clean_history() -> History:
    """One job placed on an 8-GPU pool, run once with one usage interval, billed; a second one rejected."""
    rejected_job = str(uuid.uuid4())
    usage = event("usage.reported", source="factory/nacc-haenam", attempt=1, seq=1, gpu_seconds=3600)
    placed = event(
        "jobs.placed",
        attempt=1,
        site_id="nacc-haenam",
        pool_id="pool-a",
        gpu_count=8,
        price_krw_per_gpu_hour=1000,
        explanation={"decision_id": DECISION, "policy_revision": REVISION},
    )
    return History(
        events={
            "jobs.requested": [event("jobs.requested"), event("jobs.requested", job_id=rejected_job)],
            "jobs.placed": [placed],
            "jobs.rejected": [event("jobs.rejected", job_id=rejected_job)],
            "jobs.started": [event("jobs.started", time="2026-11-22T01:00:01Z", attempt=1)],
            "usage.reported": [usage],
            "jobs.completed": [
                event("jobs.completed", time="2026-11-22T02:00:00Z", attempt=1, status="succeeded")
            ],
            "jobs.billed": [event("jobs.billed", attempt=1, amount_krw=1000)],
        },
        jobs=[
            {"job_id": JOB, "state": "completed", "pool_id": "pool-a", "gpu_count": 8, "attempt": 1},
            {"job_id": rejected_job, "state": "rejected", "pool_id": None, "gpu_count": 1, "attempt": 1},
        ],
        pools=[{"pool_id": "pool-a", "reserved_gpus": 0, "total_gpus": 8, "status": "available"}],
        decisions=[
            {
                "decision_id": DECISION,
                "policy_revision": REVISION,
                "result": {"sites": [{"site_id": "nacc-haenam", "allowed": True}]},
            }
        ],
        logged_decision_ids={DECISION},
        runs=[{"job_id": JOB, "attempt": 1, "started_reported": True}],
        usage_lines=[
            {"source": usage["source"], "event_id": usage["id"], "job_id": JOB, "attempt": 1, "seq": 1}
        ],
        charges=[{"job_id": JOB, "attempt": 1, "billed": True}],
        postings=[
            {"transaction_id": "t1", "amount_krw": 1100},
            {"transaction_id": "t1", "amount_krw": -1000},
            {"transaction_id": "t1", "amount_krw": -100},
        ],
        outbox_backlog={"placement": 0, "billing": 0},
        known_revisions={REVISION},
    )


def test_a_clean_history_passes() -> None:
    assert check(clean_history()) == []


def test_a_clean_history_with_its_tenant_streams_passes() -> None:
    history = _streamed(clean_history())
    assert {e["type"] for e in history.tenant_streams["mois"]} == {
        "jobs.placed",
        "jobs.rejected",
        "jobs.started",
        "jobs.completed",
        "jobs.billed",
    }
    assert check(history) == []
    # A copy published twice (the outbox relay repairing a crash) is the same event.
    history.tenant_streams["mois"].append(copy.deepcopy(history.tenant_streams["mois"][0]))
    assert check(history) == []


def test_a_republished_event_is_not_a_second_effect() -> None:
    history = clean_history()
    history.events["jobs.placed"].append(copy.deepcopy(history.events["jobs.placed"][0]))
    history.events["usage.reported"].append(copy.deepcopy(history.events["usage.reported"][0]))
    assert check(history) == []


def _second_placement(h: History) -> None:
    again = copy.deepcopy(h.events["jobs.placed"][0])
    again["id"] = str(uuid.uuid4())
    h.events["jobs.placed"].append(again)


def _second_outcome(h: History) -> None:
    h.events["jobs.rejected"].append(event("jobs.rejected"))


def _never_ended(h: History) -> None:
    h.events["jobs.completed"].clear()
    h.events["jobs.billed"].clear()
    h.jobs[0]["state"] = "running"
    h.pools[0]["reserved_gpus"] = 8


def _states_disagree(h: History) -> None:
    h.jobs[0]["state"] = "failed"


def _overbooked(h: History) -> None:
    h.pools[0]["reserved_gpus"] = 4


def _two_runs_overlap(h: History) -> None:
    other = str(uuid.uuid4())
    h.events["jobs.placed"].append(
        event(
            "jobs.placed",
            job_id=other,
            attempt=1,
            site_id="nacc-haenam",
            pool_id="pool-a",
            gpu_count=4,
            price_krw_per_gpu_hour=1000,
            explanation={"decision_id": DECISION, "policy_revision": REVISION},
        )
    )
    h.events["jobs.started"].append(event("jobs.started", time="2026-11-22T01:30:00Z", job_id=other))


def _no_decision(h: History) -> None:
    h.decisions.clear()


def _site_not_allowed(h: History) -> None:
    h.decisions[0]["result"]["sites"][0]["allowed"] = False


def _unknown_revision(h: History) -> None:
    h.known_revisions = {"rev-0"}


def _not_in_audit_log(h: History) -> None:
    h.logged_decision_ids.clear()


def _usage_not_rated(h: History) -> None:
    h.usage_lines.clear()


def _interval_rated_twice(h: History) -> None:
    h.usage_lines.append({**h.usage_lines[0], "event_id": str(uuid.uuid4())})


def _unbalanced(h: History) -> None:
    h.postings[0]["amount_krw"] = 1101


def _billed_other_than_its_usage(h: History) -> None:
    h.events["jobs.billed"][0]["data"]["amount_krw"] = 1001  # an hour at 1,000 KRW/GPU-h is 1,000


def _billed_twice(h: History) -> None:
    h.events["jobs.billed"].append(event("jobs.billed", attempt=1, amount_krw=1000))


def _billing_check_failed(h: History) -> None:
    h.billing_problems.append("invoice X: subtotal 5 KRW, recomputed 6 KRW")


def _wrong_subject(h: History) -> None:
    h.events["usage.reported"][0]["subject"] = "hanbit-ai"


def _outbox_left(h: History) -> None:
    h.outbox_backlog["billing"] = 2


def _placed_without_event(h: History) -> None:
    h.events["jobs.placed"].clear()


def _streamed(h: History) -> History:
    """The history as the tenants' streams would have it: mois's copy of every event it is told or relayed,
    and hanbit-ai's empty stream."""
    h.tenant_streams = {
        "mois": [copy.deepcopy(e) for topic in sorted(TENANT_STREAM_TYPES) for e in h.events.get(topic, [])],
        "hanbit-ai": [],
    }
    return h


def _foreign_event_on_a_stream(h: History) -> None:
    _streamed(h).tenant_streams["hanbit-ai"].append(copy.deepcopy(h.events["jobs.billed"][0]))


def _foreign_subject_on_a_stream(h: History) -> None:
    _streamed(h).tenant_streams["mois"][0]["subject"] = "hanbit-ai"


def _not_an_event_on_a_stream(h: History) -> None:
    _streamed(h).tenant_streams["hanbit-ai"].append({"undecodable": b"{"})


def _never_reached_the_stream(h: History) -> None:
    billed = h.events["jobs.billed"][0]["id"]
    streams = _streamed(h).tenant_streams
    streams["mois"] = [e for e in streams["mois"] if e["id"] != billed]


def _dead_letter(h: History) -> None:
    h.dead_letters.append(DeadLetter("jobs.requested.dlq", {"dlq-error-type": "ValidationError"}, b"{"))


@pytest.mark.parametrize(
    ("break_it", "invariant"),
    [
        (_second_placement, 1),
        (_second_outcome, 1),
        (_never_ended, 1),
        (_states_disagree, 1),
        (_overbooked, 2),
        (_two_runs_overlap, 2),
        (_no_decision, 3),
        (_site_not_allowed, 3),
        (_unknown_revision, 3),
        (_not_in_audit_log, 3),
        (_usage_not_rated, 4),
        (_interval_rated_twice, 4),
        (_unbalanced, 4),
        (_billed_twice, 4),
        (_billed_other_than_its_usage, 4),
        (_billing_check_failed, 4),
        (_wrong_subject, 5),
        (_foreign_event_on_a_stream, 5),
        (_foreign_subject_on_a_stream, 5),
        (_not_an_event_on_a_stream, 5),
        (_never_reached_the_stream, 6),
        (_outbox_left, 6),
        (_placed_without_event, 6),
        (_dead_letter, 6),
    ],
)
def test_each_kind_of_violation_is_caught(break_it: Callable[[History], None], invariant: int) -> None:
    history = clean_history()
    break_it(history)
    found = check(history)
    assert found, f"{break_it.__name__} was not caught"
    assert invariant in {v.invariant for v in found}, [str(v) for v in found]


def test_expected_dead_letters_are_counted_exactly() -> None:
    history = clean_history()
    _dead_letter(history)
    assert check(history, expected_dead_letters=1) == []
    assert [v.invariant for v in check(history, expected_dead_letters=2)] == [6]


def test_a_request_refused_as_an_envelope_was_never_accepted_and_needs_no_outcome() -> None:
    """A request in one tenant's name signed with another's key is refused to the signer (scope envelope);
    its job was never taken on. A refusal of some other envelope excuses nothing."""
    history = clean_history()
    forged = event("jobs.requested", job_id=str(uuid.uuid4()))
    history.events["jobs.requested"].append(forged)
    refusal = event(
        "jobs.rejected",
        job_id=str(uuid.uuid4()),
        tenant_id="hanbit-ai",
        scope="envelope",
        envelope_type="jobs.requested",
        envelope_id=str(uuid.uuid4()),
    )
    history.events["jobs.rejected"].append(refusal)
    assert {(v.invariant, v.subject) for v in check(history)} == {(1, forged["data"]["job_id"])}
    refusal["data"]["envelope_id"] = forged["id"]
    assert check(history) == []


def test_a_failed_run_retried_elsewhere_ends_once() -> None:
    history = clean_history()
    failed = event("jobs.completed", time="2026-11-22T01:30:00Z", attempt=1, status="failed")
    history.events["jobs.completed"] = [failed]
    history.events["jobs.billed"] = [event("jobs.billed", attempt=1, amount_krw=1000)]
    assert [v.invariant for v in check(history)] == [1]  # failed, not what placement says
    history.jobs[0]["state"] = "failed"
    assert check(history) == []
    # A second run after the failure: the failure is no longer the outcome, the second run's end is.
    second = event(
        "jobs.placed",
        attempt=2,
        site_id="nacc-haenam",
        pool_id="pool-a",
        gpu_count=8,
        price_krw_per_gpu_hour=1000,
        explanation={"decision_id": DECISION, "policy_revision": REVISION},
    )
    history.events["jobs.placed"].append(second)
    assert {v.invariant for v in check(history)} == {1}  # run 2 never ended
    history.events["jobs.completed"].append(
        event("jobs.completed", time="2026-11-22T03:00:00Z", attempt=2, status="succeeded")
    )
    history.events["jobs.billed"].append(event("jobs.billed", attempt=2, amount_krw=0))
    history.jobs[0].update(state="completed", attempt=2)
    assert check(history) == []


def test_a_worker_is_down_when_its_heartbeat_stops_and_stopped_when_it_said_so() -> None:
    now = datetime.now(UTC)
    row = WorkerRow(worker_id="w", host="h", pid=1, heartbeat_at=now)
    assert worker_state(row, now) == "starting"
    row.ready_at = now
    assert worker_state(row, now + STALE_AFTER) == "ready"
    assert worker_state(row, now + STALE_AFTER + timedelta(seconds=1)) == "down"
    row.stopped_at = now
    assert worker_state(row, now + timedelta(hours=1)) == "stopped"


def test_a_failed_run_whose_retry_was_rejected_ends_rejected() -> None:
    history = clean_history()
    history.events["jobs.completed"] = [
        event("jobs.completed", time="2026-11-22T01:30:00Z", attempt=1, status="failed")
    ]
    history.events["jobs.rejected"].append(event("jobs.rejected"))  # no allowed site left for run 2
    history.jobs[0]["state"] = "rejected"
    assert check(history) == []
    history.jobs[0]["state"] = "failed"
    assert [v.invariant for v in check(history)] == [1]


def test_a_run_accepted_at_a_factory_needs_jobs_started_only_once_its_backend_started_it() -> None:
    history = clean_history()
    history.runs.append({"job_id": str(uuid.uuid4()), "attempt": 1, "started_reported": False})
    assert check(history) == []  # cancelled before its backend ran it: it never started
    history.runs[-1]["started_reported"] = True
    assert [v.invariant for v in check(history)] == [6]
