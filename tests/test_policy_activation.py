"""A published revision is activated only when its officer signed it, its files hash to it and its whole
test suite passes in a child process: the checks every worker runs before it switches (no broker here;
tests/test_policy_publish.py publishes over one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contracts.events import PolicyPublishedEvent
from services.shared.domain import policy_check
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle, PolicyEngine, run_rego_tests
from services.shared.domain.policy_check import activate_published
from services.shared.settings import REPO_ROOT
from tests.conftest import KEYRING, TEST_KEYS, published_event, published_revision
from tests.test_policy_publish import broken_copy, policy_copy


async def test_a_worker_activates_only_a_tested_bundle_that_matches_its_revision(tmp_path: Path) -> None:
    current = EmbeddedRegoEngine(PolicyBundle.load(REPO_ROOT / "policies"))
    good = PolicyBundle.load(policy_copy(tmp_path, "warn"))

    async def activate(event: PolicyPublishedEvent) -> PolicyEngine | None:
        return await activate_published(current, event, KEYRING)

    tampered = {**good.files, "data.json": good.files["data.json"].replace('"warn"', '"dryrun"')}
    assert await activate(published_event(published_revision(good, tampered))) is None
    broken = PolicyBundle.load(broken_copy(tmp_path))
    assert await activate(published_event(published_revision(broken))) is None
    no_bundle = published_revision(good).model_copy(update={"bundle": None})
    assert await activate(published_event(no_bundle)) is None
    activated = await activate(published_event(published_revision(good)))
    assert activated is not None and activated.revision == good.revision


async def test_an_unsigned_or_wrongly_signed_revision_is_not_activated(tmp_path: Path) -> None:
    current = EmbeddedRegoEngine(PolicyBundle.load(REPO_ROOT / "policies"))
    good = published_revision(PolicyBundle.load(policy_copy(tmp_path, "warn")))
    signed = published_event(good)
    relaxed = PolicyBundle.load(policy_copy(tmp_path, "dryrun"))
    # The officer's signature on one revision, the content of another swapped in after signing.
    swapped = signed.model_copy(
        update={
            "data": good.model_copy(update={"bundle": relaxed.files, "policy_revision": relaxed.revision})
        }
    )
    refused = {
        "unsigned": published_event(good, signer=None),
        "signed by a tenant": published_event(good, signer=TEST_KEYS.tenants["mois"]),
        "signed as someone else": published_event(
            good.model_copy(update={"published_by": "intern@example.go.kr"})
        ),
        "changed after signing": swapped,
    }
    reasons = {
        "unsigned": "unsigned",
        "signed by a tenant": "has the tenant role, not the officer role",
        "signed as someone else": "does not speak for 'intern@example.go.kr'",
        "changed after signing": "bad signature",
    }
    for name, event in refused.items():
        with capture_logs() as logs:
            assert await activate_published(current, event, KEYRING) is None, name
        [refusal] = [entry for entry in logs if entry["event"] == "policy_revision_refused"]
        assert reasons[name] in refusal["reason"], (name, refusal)
    assert await activate_published(current, signed, KEYRING) is not None


SHIPPED = PolicyBundle.load(REPO_ROOT / "policies")


async def test_the_child_process_passes_the_shipped_bundle_and_counts_its_tests() -> None:
    result = await policy_check.check_in_child_process(SHIPPED)
    passed = sum(r.passed for r in run_rego_tests(SHIPPED).results)
    assert (result.ok, result.tests_passed, result.detail) == (True, passed, f"{passed} tests passed")


async def test_the_child_process_refuses_a_failing_bundle_with_the_failure(tmp_path: Path) -> None:
    result = await policy_check.check_in_child_process(PolicyBundle.load(broken_copy(tmp_path)))
    assert not result.ok and result.tests_passed == 0
    assert "test_res01" in result.detail and "rule is false or undefined" in result.detail


async def test_a_check_that_does_not_finish_in_time_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_check, "CHECK_SECONDS", 0.01)
    result = await policy_check.check_in_child_process(SHIPPED)
    assert not result.ok and result.detail == "the policy check did not finish within 0 s"


def test_a_written_bundle_loads_as_the_same_revision(tmp_path: Path) -> None:
    policy_check.write_bundle(SHIPPED, tmp_path / "copy")
    assert PolicyBundle.load(tmp_path / "copy").revision == SHIPPED.revision


def test_the_check_commands_exit_status_and_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert policy_check.main([str(REPO_ROOT / "policies")]) == 0
    assert capsys.readouterr().out.strip().endswith("tests passed")
    assert policy_check.main([str(broken_copy(tmp_path))]) == 1
    assert "rule is false or undefined" in capsys.readouterr().out
    assert policy_check.main([str(tmp_path / "nothing")]) == 1


def test_checking_a_directory_counts_what_passed_and_names_what_failed(tmp_path: Path) -> None:
    passed = sum(r.passed for r in run_rego_tests(SHIPPED).results)
    assert policy_check.check_directory(REPO_ROOT / "policies") == policy_check.CheckResult(
        True, passed, f"{passed} tests passed"
    )
    broken = policy_check.check_directory(broken_copy(tmp_path))
    failures = [line for line in broken.detail.split("; ") if "rule is false or undefined" in line]
    assert not broken.ok and 0 < broken.tests_passed < passed and len(failures) >= 2
    assert all(line.startswith("data.sovereign.") for line in failures)
    assert policy_check.check_directory(tmp_path / "nothing") == policy_check.CheckResult(
        False, 0, f"policy directory {tmp_path / 'nothing'} does not exist"
    )
