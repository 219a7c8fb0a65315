"""`sovereign decisions ...`: an auditor's view of governance's decision log."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager

from sqlmodel import Session

from services.governance.queries import DecisionQuery, find_decisions, summarize, verify_log
from services.governance.storage import TABLES
from services.shared.settings import Settings
from sovereign.options import Commands, connection_options, settings_of
from sovereign.verification.databases import service_session


def governance_session(settings: Settings) -> AbstractContextManager[Session]:
    return service_session(settings, "governance", TABLES)


def list_decisions(settings: Settings, query: DecisionQuery, limit: int) -> int:
    with governance_session(settings) as session:
        entries = find_decisions(session, query, limit)
    for entry in entries:
        summary = summarize(entry)
        print(
            f"#{entry.seq:<6} {entry.decided_at:%Y-%m-%d %H:%M:%S}  job {entry.job_id}"
            f"  tenant {entry.tenant_id:<20}"
            f" revision {entry.policy_revision[:12]}  {summary.sites_allowed}/{summary.sites} sites allowed"
            f"  rules: {', '.join(summary.rules) or '-'}"
        )
    print(f"{len(entries)} decisions")
    return 0


def verify_decisions(settings: Settings) -> int:
    with governance_session(settings) as session:
        verification = verify_log(session)
    if verification.broken is not None:
        broken = verification.broken
        print(f"decision log BROKEN at entry {broken.seq}: {broken.reason}")
    for gap in verification.gaps:
        print(f"decision log INCOMPLETE: {gap.describe()}")
    if not verification.intact:
        return 1
    print(
        f"decision log intact: {verification.entries} entries, every hash links to the one before it and "
        "every worker's decisions are there without a gap"
    )
    return 0


def register(commands: Commands) -> None:
    decisions = commands.add_parser(
        "decisions", help="the auditor's view of the decision log"
    ).add_subparsers(dest="decisions_command", required=True)
    listing = decisions.add_parser("list", help="list logged decisions, filtered")
    for name in ("job", "tenant", "site", "rule", "revision"):
        listing.add_argument(f"--{name}", help=f"only decisions for this {name} (revision: a prefix)")
    listing.add_argument("--limit", type=int, default=200)
    connection_options(listing)
    listing.set_defaults(handler=_decisions_list)
    verify = decisions.add_parser(
        "verify", help="check the log's hash chain; non-zero if any entry was altered"
    )
    connection_options(verify)
    verify.set_defaults(handler=_decisions_verify)


def _decisions_list(args: argparse.Namespace) -> int:
    query = DecisionQuery(
        job_id=args.job,
        tenant_id=args.tenant,
        site_id=args.site,
        rule=args.rule,
        policy_revision=args.revision,
    )
    return list_decisions(settings_of(args), query, args.limit)


def _decisions_verify(args: argparse.Namespace) -> int:
    return verify_decisions(settings_of(args))
