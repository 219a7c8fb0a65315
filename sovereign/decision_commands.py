"""`sovereign decisions ...`: an auditor's view of governance's decision log."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlmodel import Session

from services.governance.queries import DecisionQuery, find_decisions, verify_log
from services.governance.storage import TABLES
from services.shared.settings import Settings
from sovereign.databases import service_session


def governance_session(settings: Settings) -> AbstractContextManager[Session]:
    return service_session(settings, "governance", TABLES)


def list_decisions(settings: Settings, query: DecisionQuery, limit: int) -> int:
    with governance_session(settings) as session:
        entries = find_decisions(session, query, limit)
    for entry in entries:
        sites = entry.content["decision"]["sites"]
        allowed = sum(1 for s in sites if s["allowed"])
        rules = sorted({v["rule"] for s in sites for v in s["violations"]})
        print(
            f"#{entry.seq:<6} {entry.decided_at:%Y-%m-%d %H:%M:%S}  job {entry.job_id}"
            f"  tenant {entry.tenant_id:<20}"
            f" revision {entry.policy_revision[:12]}  {allowed}/{len(sites)} sites allowed"
            f"  rules: {', '.join(rules) or '-'}"
        )
    print(f"{len(entries)} decisions")
    return 0


def verify_decisions(settings: Settings) -> int:
    with governance_session(settings) as session:
        count, broken = verify_log(session)
    if broken is None:
        print(f"decision log intact: {count} entries, every hash links to the one before it")
        return 0
    print(f"decision log BROKEN at entry {broken.seq}: {broken.reason}")
    return 1
