"""`sovereign policy ...`: the compliance officer's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from contracts.events import PolicyPublishedEvent, PolicyRevisionPublished
from services.governance.policy_diff import diff_bundles
from services.governance.queries import find_revision, latest_revision, what_if
from services.governance.what_if import ASSUMPTIONS, EVERY_JOB, EffectKind, Scope, WhatIfReport
from services.shared.domain.catalogue import CatalogueError, load_catalogue
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle, PolicyEngineError, run_rego_tests
from services.shared.domain.policy_check import check_in_child_process
from services.shared.domain.signing import Signer
from services.shared.kafka import transport_security
from services.shared.settings import Settings
from sovereign.decision_commands import governance_session
from sovereign.options import Commands, connection_options, moment, settings_of
from sovereign.verification.watch import produce

# Every revision goes to one partition, so all consumers see them in publication order.
PUBLICATION_KEY = "policies"


def registry_problem(catalogue_dir: Path) -> str | None:
    """Why the tenant registry (and the sites) the policy reads would not load, or None."""
    try:
        load_catalogue(catalogue_dir)
    except CatalogueError as error:
        return str(error)
    return None


def policy_test(directory: Path, catalogue_dir: Path | None = None) -> int:
    """Run every Rego test; report each and which catalogue rules fired, and check the registry the
    policy reads (catalogue_dir). Non-zero on any failure."""
    try:
        bundle = PolicyBundle.load(directory)
        run = run_rego_tests(bundle)
    except PolicyEngineError as error:
        print(f"FAIL  {directory}: {error}")
        return 1
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
    refused_registry = registry_problem(catalogue_dir) if catalogue_dir is not None else None
    if refused_registry is not None:
        print(f"FAIL  registry: {refused_registry}")
    print(f"policy revision {bundle.revision}")
    return 0 if run.ok and refused_registry is None else 1


async def policy_publish(directory: Path, settings: Settings, published_by: str) -> int:
    """Publish a revision only if it compiles and passes all its tests in a child process, signed by the
    compliance officer's key (SOVEREIGN_SIGNING_KEY): placement activates no revision without it."""
    if settings.signing_key_path is None:
        print("refused: publishing needs your officer key (SOVEREIGN_SIGNING_KEY, SOVEREIGN_SIGNING_KEY_ID)")
        return 2
    signer = Signer.load(settings.signing_key_path, settings.signing_key_id)
    try:
        bundle = PolicyBundle.load(directory)
    except PolicyEngineError as error:
        print(f"refused: {error}")
        return 1
    refused_registry = registry_problem(settings.catalogue_dir)
    if refused_registry is not None:
        print(f"refused: the registry the policy reads does not load: {refused_registry}")
        return 1
    result = await check_in_child_process(bundle)
    if not result.ok:
        print(f"refused: revision {bundle.revision[:12]} does not pass its tests: {result.detail}")
        return 1
    published = PolicyRevisionPublished(
        policy_revision=bundle.revision,
        published_by=published_by,
        tests_passed=result.tests_passed,
        files=bundle.file_digests(),
        bundle=bundle.files,
    )
    event = signer.sign(
        PolicyPublishedEvent.create(source="service/governance", subject="policies", data=published)
    )
    await produce(
        settings.bootstrap_servers,
        [(event, PUBLICATION_KEY)],
        settings.idempotent_producer,
        transport_security(settings),
    )
    print(f"published revision {bundle.revision} ({result.tests_passed} tests passed), by {published_by}")
    return 0


def load_bundle(reference: str, settings: Settings) -> PolicyBundle:
    """A policy directory, or a published revision (a unique prefix of its id) from governance's store."""
    if Path(reference).is_dir():
        return PolicyBundle.load(Path(reference))
    with governance_session(settings) as session:
        row = find_revision(session, reference)
    if row is None:
        raise PolicyEngineError(
            f"{reference!r} is neither a policy directory nor one published revision's id"
        )
    return PolicyBundle(dict(row.bundle))


def policy_diff(old_reference: str, new_reference: str, settings: Settings) -> int:
    try:
        old, new = load_bundle(old_reference, settings), load_bundle(new_reference, settings)
    except PolicyEngineError as error:
        print(f"error: {error}")
        return 2
    lines = diff_bundles(old, new)
    print(f"{old.revision[:12]} -> {new.revision[:12]}: {len(lines) or 'no'} differences")
    for line in lines:
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
        candidate = EmbeddedRegoEngine(load_bundle(against, settings))
        if current_reference is not None:
            baseline = load_bundle(current_reference, settings)
        else:
            with governance_session(settings) as session:
                published = latest_revision(session)
            baseline = (
                PolicyBundle(dict(published.bundle)) if published else PolicyBundle.load(settings.policy_dir)
            )
        current = EmbeddedRegoEngine(baseline)
        budgeted = frozenset(
            t for t, tenant in load_catalogue(settings.catalogue_dir).tenants.items() if tenant.budget
        )
    except (PolicyEngineError, CatalogueError) as error:
        print(f"error: {error}")
        return 2
    with governance_session(settings) as session:
        report = what_if(session, current, candidate, scope, budgeted)
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
