"""`sovereign policy ...`: the compliance officer's commands."""

from __future__ import annotations

from pathlib import Path

from services.shared.policy import PolicyBundle, PolicyEngineError, run_rego_tests


def policy_test(directory: Path) -> int:
    """Run every Rego test; report each and which catalogue rules fired. Non-zero on any failure."""
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
    passed = sum(r.passed for r in run.results)
    print(f"\n{passed} passed, {len(run.results) - passed} failed")
    print(f"rules exercised: {len(run.exercised)} of {len(run.exercised) + len(run.not_exercised)}")
    for rule in sorted(run.not_exercised):
        print(f"  never fired in any test: {rule}")
    print(f"policy revision {bundle.revision}")
    return 0 if run.ok else 1
