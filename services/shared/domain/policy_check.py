"""Compile a policy bundle and run its whole test suite, meant to run in a child process:
`python -m services.shared.domain.policy_check DIR` exits 0 only if every test passes and every rule fires
in one.

Services verify a revision this way before activating it, so an engine crash cannot take them down.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contracts.events import PolicyPublishedEvent
from services.shared.commands import output_within
from services.shared.domain.policy import (
    EmbeddedRegoEngine,
    OpaServerEngine,
    PolicyBundle,
    PolicyEngine,
    PolicyEngineError,
    run_rego_tests,
)
from services.shared.domain.signing import Keyring, KeyRole
from services.shared.logging import get_logger

CHECK_SECONDS = 120.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    tests_passed: int
    detail: str


def check_directory(directory: Path) -> CheckResult:
    try:
        run = run_rego_tests(PolicyBundle.load(directory))
    except PolicyEngineError as error:
        return CheckResult(False, 0, str(error))
    failed = [f"{r.name}: {r.error}" for r in run.results if not r.passed]
    problems = (
        run.data_problems
        + failed
        + [f"rule {rule} never fires in any test" for rule in sorted(run.not_exercised)]
    )
    passed = sum(r.passed for r in run.results)
    return CheckResult(run.ok, passed, "; ".join(problems) or f"{passed} tests passed")


def write_bundle(bundle: PolicyBundle, directory: Path) -> None:
    for relative, text in bundle.files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


async def check_in_child_process(bundle: PolicyBundle) -> CheckResult:
    """Run check_directory on the bundle in a separate Python process; a crash or hang there is a refusal."""
    with tempfile.TemporaryDirectory() as scratch:
        write_bundle(bundle, Path(scratch))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.shared.domain.policy_check",
            scratch,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        finished = await output_within(process, CHECK_SECONDS)
        if finished is None:
            return CheckResult(False, 0, f"the policy check did not finish within {CHECK_SECONDS:.0f} s")
        output, _ = finished
    lines = output.decode(errors="replace").strip().splitlines()
    if process.returncode != 0:
        return CheckResult(
            False, 0, lines[-1] if lines else f"the policy check exited with {process.returncode}"
        )
    return CheckResult(True, int(lines[-1].split()[0]), lines[-1])


async def activate_published(
    current: PolicyEngine, event: PolicyPublishedEvent, keyring: Keyring
) -> PolicyEngine | None:
    """The engine for a newly published revision, or None (logged) when it must not be activated: it must
    be signed by the key of the compliance officer it names as publisher, and pass its tests. On the OPA
    backend, the server is given the revision through its policy and data APIs and must be seen to run it."""
    published = event.data
    log = get_logger(policy_revision=published.policy_revision, current_revision=current.revision)
    if published.policy_revision == current.revision:
        return None
    refusal = keyring.refusal(event, KeyRole.OFFICER, published.published_by)
    if refusal is not None:
        log.error("policy_revision_refused", reason=f"not signed by its publisher: {refusal}")
        return None
    if published.bundle is None:
        log.error("policy_revision_refused", reason="the event carries no bundle")
        return None
    bundle = PolicyBundle(dict(published.bundle))
    if bundle.revision != published.policy_revision:
        log.error(
            "policy_revision_refused", reason="the bundle's content does not hash to the published revision"
        )
        return None
    result = await check_in_child_process(bundle)
    if not result.ok:
        log.error("policy_revision_refused", reason=result.detail)
        return None
    engine: PolicyEngine
    if isinstance(current, OpaServerEngine):
        try:
            engine = await asyncio.to_thread(current.publish, bundle)
        except PolicyEngineError as error:
            log.error("policy_revision_refused", reason=f"the OPA server did not take it: {error}")
            return None
    else:
        engine = EmbeddedRegoEngine(bundle)
    log.info(
        "policy_revision_activated",
        engine=engine.name,
        tests_passed=result.tests_passed,
        published_by=published.published_by,
    )
    return engine


def main(argv: list[str]) -> int:
    result = check_directory(Path(argv[0]))
    print(result.detail if not result.ok else f"{result.tests_passed} tests passed")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
