"""`sovereign policy ...`: the compliance officer's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
from functools import partial
from pathlib import Path

from services.governance.officer_actions import (
    PUBLICATION_KEY,
    ActionRefused,
    prepare_publication,
    revision_diff,
    run_revision_tests,
    what_if_report,
)
from services.governance.what_if import ASSUMPTIONS, EVERY_JOB, EffectKind, Scope, WhatIfReport
from services.shared.domain.signing import Signer
from services.shared.kafka import transport_security
from services.shared.settings import Settings
from sovereign.decision_commands import governance_session
from sovereign.options import Commands, connection_options, moment, settings_of
from sovereign.verification.watch import produce


def policy_test(directory: Path, catalogue_dir: Path | None = None) -> int:
    """Run every Rego test; report each and which catalogue rules fired, and check the registry the
    policy reads (catalogue_dir). Non-zero on any failure."""
    try:
        tested = run_revision_tests(directory, catalogue_dir)
    except ActionRefused as refusal:
        print(f"FAIL  {refusal}")
        return 1
    run = tested.run
    for result in sorted(run.results, key=lambda r: r.name):
        status = "PASS" if result.passed else "FAIL"
        detail = f"  ({result.error})" if result.error else ""
        print(f"{status}  {result.name}  {result.duration_ms:.2f} ms{detail}")
    if run.reads:
        print("\nwhat each rule reads (* absent means none on file; every other one, absent, denies):")
        for rule, attributes in sorted(run.reads.items()):
            marked = [f"{name}*" if name in run.optional else name for name in attributes]
            print(f"  {rule:8} {', '.join(marked)}")
    for problem in run.data_problems:
        print(f"FAIL  {problem}")
    passed = sum(r.passed for r in run.results)
    print(f"\n{passed} passed, {len(run.results) - passed} failed")
    print(f"rules exercised: {len(run.exercised)} of {len(run.exercised) + len(run.not_exercised)}")
    for rule in sorted(run.not_exercised):
        print(f"  never fired in any test: {rule}")
    if run.data_problems:
        print(f"data.json refused: {len(run.data_problems)} problem(s)")
    if tested.registry_problem is not None:
        print(f"FAIL  registry: {tested.registry_problem}")
    print(f"policy revision {tested.revision}")
    return 0 if tested.ok else 1


async def policy_publish(directory: Path, settings: Settings, published_by: str) -> int:
    """Publish a revision only if it compiles and passes all its tests in a child process, signed by the
    compliance officer's key (SOVEREIGN_SIGNING_KEY): placement activates no revision without it."""
    if settings.signing_key_path is None:
        print("refused: publishing needs your officer key (SOVEREIGN_SIGNING_KEY, SOVEREIGN_SIGNING_KEY_ID)")
        return 2
    signer = Signer.load(settings.signing_key_path, settings.signing_key_id)
    try:
        event = await prepare_publication(directory, settings.catalogue_dir, signer, published_by)
    except ActionRefused as refusal:
        print(f"refused: {refusal}")
        return 1
    await produce(
        settings.bootstrap_servers,
        [(event, PUBLICATION_KEY)],
        settings.idempotent_producer,
        transport_security(settings),
    )
    revision, tests = event.data.policy_revision, event.data.tests_passed
    print(f"published revision {revision} ({tests} tests passed), by {published_by}")
    return 0


def policy_diff(old_reference: str, new_reference: str, settings: Settings) -> int:
    try:
        diff = revision_diff(old_reference, new_reference, partial(governance_session, settings))
    except ActionRefused as refusal:
        print(f"error: {refusal}")
        return 2
    print(f"{diff.old[:12]} -> {diff.new[:12]}: {len(diff.lines) or 'no'} differences")
    for line in diff.lines:
        print(f"  {line}")
    return 0


def policy_what_if(
    against: str,
    settings: Settings,
    current_reference: str | None = None,
    scope: Scope = EVERY_JOB,
    as_json: bool = False,
) -> int:
    """Replay recorded decisions under the candidate and the current revision. 0 when the candidate would
    place no job where a rule of the current revision forbids it, 1 when it would, 2 on an error."""
    try:
        report = what_if_report(
            against,
            partial(governance_session, settings),
            settings.policy_dir,
            settings.catalogue_dir,
            current_reference,
            scope,
        )
    except ActionRefused as refusal:
        print(f"error: {refusal}")
        return 2
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_what_if(report)
    return 1 if report.forbidden else 0


def _counts(counts: dict[EffectKind, int]) -> str:
    return ", ".join(f"{KIND_NAMES[kind]} {n}" for kind, n in counts.items() if n) or "none"


KIND_NAMES: dict[EffectKind, str] = {
    "newly_allowed": "newly allowed somewhere",
    "newly_denied": "newly denied somewhere",
    "moved": "moved",
    "newly_placed": "newly placed",
    "newly_unplaceable": "newly unplaceable",
    "warnings_added": "warnings added",
}


def print_what_if(report: WhatIfReport) -> None:
    scope = report.scope.as_json()
    described = "; ".join(
        f"{name} {', '.join(value) if isinstance(value, list) else value}"
        for name, value in scope.items()
        if value
    )
    print(
        f"What-if: candidate {report.candidate[:12]} against the current revision {report.current[:12]}"
        f" ({described or 'every job'})"
    )
    print(f"Replayed the latest decision of {report.replayed} jobs: {len(report.changes)} would change.")
    print(f"  {_counts(report.by_kind())}")
    if report.forbidden:
        print(f"\n{len(report.forbidden)} jobs would be placed where a rule of the current revision forbids:")
        for change in report.forbidden:
            print(
                f"  job {change.job_id} ({change.tenant_id}): {change.after.describe()}, forbidden by "
                f"{', '.join(change.forbidden_by) or 'no single rule'}"
            )
    else:
        print("No job would be placed where a rule of the current revision forbids.")
    if report.changes:
        print("\nBy rule:")
        for rule, counts in report.by_rule().items():
            print(f"  {rule}: {_counts(counts)}")
        print("By tenant:")
        for tenant, counts in report.by_tenant().items():
            print(f"  {tenant}: {_counts(counts)}")
        print("\nJobs:")
    for change in report.changes:
        print(
            f"  job {change.job_id} ({change.tenant_id}, decided {change.decided_at:%Y-%m-%d %H:%M} UTC): "
            f"{change.before.describe()} -> {change.after.describe()}"
        )
        for effect in change.effects:
            print(f"    {KIND_NAMES[effect.kind]} ({', '.join(effect.sites)}): {effect.attribution()}")
        for site in change.sites:
            print(f"      {site.describe()}")
        for dependency in change.depends_on:
            print(f"    depends on {dependency}")
    if report.limits:
        print("\nNot replayed as it happened:")
        for limit in report.limits:
            shown = ", ".join(limit.job_ids[:5]) + (" ..." if len(limit.job_ids) > 5 else "")
            print(f"  {len(limit.job_ids)} jobs: {limit.reason} ({shown})")
    print("\nAssumed: " + "; ".join(ASSUMPTIONS) + ".")


def register(commands: Commands) -> None:
    policy = commands.add_parser("policy", help="compliance officer's commands").add_subparsers(
        dest="policy_command", required=True
    )
    testing = policy.add_parser("test", help="run every Rego test and report the rules exercised")
    testing.add_argument("--dir", help="policy directory (default: policies/, env SOVEREIGN_POLICY_DIR)")
    testing.set_defaults(handler=_policy_test)
    publish = policy.add_parser("publish", help="test a revision in a child process, then publish it")
    publish.add_argument("--dir", help="policy directory (default: policies/)")
    publish.add_argument("--by", required=True, help="who publishes (recorded with the revision)")
    connection_options(publish)
    publish.set_defaults(handler=_policy_publish)
    diff = policy.add_parser("diff", help="which rules changed between two revisions (directories or ids)")
    diff.add_argument("old")
    diff.add_argument("new")
    connection_options(diff)
    diff.set_defaults(handler=_policy_diff)
    what_if = policy.add_parser(
        "what-if",
        help="replay recorded decisions under a candidate revision and the current one; exit 1 if the "
        "candidate would place a job somewhere a current rule forbids",
    )
    what_if.add_argument("--against", required=True, help="a policy directory or a published revision id")
    what_if.add_argument(
        "--current",
        help="the baseline revision (a directory or a published id); default: the latest published, "
        "else the policy directory (env SOVEREIGN_POLICY_DIR)",
    )
    what_if.add_argument("--tenant", action="append", help="only this tenant's jobs (repeatable)")
    what_if.add_argument("--since", type=moment, help="only decisions made at or after this date or time")
    what_if.add_argument("--until", type=moment, help="only decisions made before this date or time")
    what_if.add_argument(
        "--rule", action="append", help="only jobs for which this rule's findings change (repeatable)"
    )
    what_if.add_argument("--json", action="store_true", help="the report as JSON, for a review record")
    connection_options(what_if)
    what_if.set_defaults(handler=_policy_what_if)


def _policy_test(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    return policy_test(Path(args.dir) if args.dir else settings.policy_dir, settings.catalogue_dir)


def _policy_publish(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else Settings.from_env().policy_dir
    return asyncio.run(policy_publish(directory, settings_of(args), args.by))


def _policy_diff(args: argparse.Namespace) -> int:
    return policy_diff(args.old, args.new, settings_of(args))


def _policy_what_if(args: argparse.Namespace) -> int:
    scope = Scope(
        tenants=frozenset(args.tenant or ()),
        since=args.since,
        until=args.until,
        rules=frozenset(rule.upper() for rule in args.rule or ()),
    )
    return policy_what_if(args.against, settings_of(args), args.current, scope, as_json=args.json)
