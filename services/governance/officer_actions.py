"""What a compliance officer does to the policies, as typed results: test a revision, prepare its
publication, compare two revisions and replay recorded decisions under a candidate (what-if). The command
line (`sovereign policy ...`) prints these results; the officer's console shows the same ones. An action
that cannot be carried out raises ActionRefused with the reason the officer reads."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from contracts.events import PolicyPublishedEvent, PolicyRevisionPublished
from services.governance.policy_diff import diff_bundles
from services.governance.queries import find_revision, latest_revision, what_if
from services.governance.what_if import EVERY_JOB, Scope, WhatIfReport
from services.shared.domain.catalogue import CatalogueError, load_catalogue
from services.shared.domain.policy import (
    EmbeddedRegoEngine,
    PolicyBundle,
    PolicyEngineError,
    RegoTestRun,
    run_rego_tests,
)
from services.shared.domain.policy_check import check_in_child_process
from services.shared.domain.signing import Signer

# Every revision goes to one partition, so all consumers see them in publication order.
PUBLICATION_KEY = "policies"
# Opens a session on governance's database (the decision log and the published revisions).
GovernanceSessions = Callable[[], AbstractContextManager[Session]]


class ActionRefused(Exception):
    """The action was not carried out; the message says why, for the officer."""


@dataclass(frozen=True)
class RevisionTest:
    """Every Rego test of a revision, and whether the registry the policy reads loads."""

    revision: str
    run: RegoTestRun
    registry_problem: str | None

    @property
    def ok(self) -> bool:
        return self.run.ok and self.registry_problem is None


@dataclass(frozen=True)
class RevisionDiff:
    old: str
    new: str
    lines: list[str]


def registry_problem(catalogue_dir: Path) -> str | None:
    """Why the tenant registry (and the sites) the policy reads would not load, or None."""
    try:
        load_catalogue(catalogue_dir)
    except CatalogueError as error:
        return str(error)
    return None


def run_revision_tests(directory: Path, catalogue_dir: Path | None = None) -> RevisionTest:
    """Run every Rego test of the policy directory, with coverage, and check the registry (catalogue_dir)."""
    try:
        bundle = PolicyBundle.load(directory)
        run = run_rego_tests(bundle)
    except PolicyEngineError as error:
        raise ActionRefused(f"{directory}: {error}") from error
    problem = registry_problem(catalogue_dir) if catalogue_dir is not None else None
    return RevisionTest(bundle.revision, run, problem)


async def prepare_publication(
    directory: Path, catalogue_dir: Path, signer: Signer, published_by: str
) -> PolicyPublishedEvent:
    """The revision's publication, signed by the officer's key, if it compiles and passes all its tests in a
    child process and the registry loads; the caller sends it on policy.published under PUBLICATION_KEY.
    Placement activates no revision without that signature."""
    try:
        bundle = PolicyBundle.load(directory)
    except PolicyEngineError as error:
        raise ActionRefused(str(error)) from error
    problem = registry_problem(catalogue_dir)
    if problem is not None:
        raise ActionRefused(f"the registry the policy reads does not load: {problem}")
    result = await check_in_child_process(bundle)
    if not result.ok:
        raise ActionRefused(f"revision {bundle.revision[:12]} does not pass its tests: {result.detail}")
    published = PolicyRevisionPublished(
        policy_revision=bundle.revision,
        published_by=published_by,
        tests_passed=result.tests_passed,
        files=bundle.file_digests(),
        bundle=bundle.files,
    )
    return signer.sign(
        PolicyPublishedEvent.create(source="service/governance", subject="policies", data=published)
    )


def load_bundle(reference: str, sessions: GovernanceSessions) -> PolicyBundle:
    """A policy directory, or a published revision (a unique prefix of its id) from governance's store."""
    if Path(reference).is_dir():
        try:
            return PolicyBundle.load(Path(reference))
        except PolicyEngineError as error:
            raise ActionRefused(str(error)) from error
    with sessions() as session:
        row = find_revision(session, reference)
    if row is None:
        raise ActionRefused(f"{reference!r} is neither a policy directory nor one published revision's id")
    return PolicyBundle(dict(row.bundle))


def revision_diff(old_reference: str, new_reference: str, sessions: GovernanceSessions) -> RevisionDiff:
    """Which rules, modes, data and exemptions differ between two revisions (directories or ids)."""
    old, new = load_bundle(old_reference, sessions), load_bundle(new_reference, sessions)
    return RevisionDiff(old.revision, new.revision, diff_bundles(old, new))


def what_if_report(
    candidate_reference: str,
    sessions: GovernanceSessions,
    default_policy_dir: Path,
    catalogue_dir: Path,
    current_reference: str | None = None,
    scope: Scope = EVERY_JOB,
) -> WhatIfReport:
    """The recorded decisions in scope, replayed under the candidate and under the current revision: the
    given one, else the latest published, else the default policy directory."""
    try:
        candidate = EmbeddedRegoEngine(load_bundle(candidate_reference, sessions))
        if current_reference is not None:
            baseline = load_bundle(current_reference, sessions)
        else:
            with sessions() as session:
                published = latest_revision(session)
            baseline = (
                PolicyBundle(dict(published.bundle)) if published else PolicyBundle.load(default_policy_dir)
            )
        current = EmbeddedRegoEngine(baseline)
        budgeted = frozenset(
            t for t, tenant in load_catalogue(catalogue_dir).tenants.items() if tenant.budget
        )
    except (PolicyEngineError, CatalogueError) as error:
        raise ActionRefused(str(error)) from error
    with sessions() as session:
        return what_if(session, current, candidate, scope, budgeted)
