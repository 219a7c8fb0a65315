"""`sovereign policy ...`: the compliance officer's commands."""

from __future__ import annotations

from pathlib import Path

from contracts.events import PolicyPublishedEvent, PolicyRevisionPublished
from services.governance.handlers import find_revision, what_if
from services.governance.policy_diff import diff_bundles
from services.shared.catalogue import CatalogueError, load_catalogue
from services.shared.kafka import transport_security
from services.shared.policy import EmbeddedRegoEngine, PolicyBundle, PolicyEngineError, run_rego_tests
from services.shared.policy_check import check_in_child_process
from services.shared.settings import Settings
from services.shared.signing import Signer
from sovereign.decision_commands import governance_session
from sovereign.watch import produce

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


def policy_what_if(against: str, settings: Settings) -> int:
    try:
        candidate = EmbeddedRegoEngine(load_bundle(against, settings))
    except PolicyEngineError as error:
        print(f"error: {error}")
        return 2
    with governance_session(settings) as session:
        report = what_if(session, candidate)
    kinds = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(report.by_kind().items()))
    print(f"Replayed the latest decision of {report.replayed} jobs under revision {candidate.revision[:12]}:")
    print(f"  {len(report.changes)} would change" + (f" ({kinds})" if kinds else ""))
    for rule, changes in report.by_rule().items():
        print(f"\n  {rule}: {len(changes)} jobs")
        for change in changes:
            print(f"    job {change.job_id} ({change.tenant_id}): {change.before} -> {change.after}")
    return 0
