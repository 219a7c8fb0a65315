"""Publishing a policy revision: tested in a child process first, then switched to by running placement
workers without a restart; a revision that fails its tests or does not match its hash is never activated."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.events import (
    CapacityOfferedEvent,
    JobKind,
    JobRequest,
)
from services.governance.officer_actions import PUBLICATION_KEY
from services.placement import app as placement_app
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.policy import PolicyBundle
from services.shared.runtime import Service
from services.shared.settings import REPO_ROOT, Settings
from sovereign.policy_commands import policy_publish
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import produce
from sovereign.verification.workload import request_events
from tests.conftest import (
    TEST_KEYS,
    TEST_KEYS_OFFICER,
    published_event,
    published_revision,
    run_services,
    service_settings,
    signing_as,
)

pytestmark = pytest.mark.broker

Placement = tuple[Settings, Tracker, list[Service]]


@pytest.fixture(scope="module")
async def placement(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Placement]:
    settings = service_settings(kafka, tmp_path_factory.mktemp("data"))
    offers = [
        (
            TEST_KEYS.factory.sign(
                CapacityOfferedEvent.create(
                    source=f"factory/{o.site.site_id}", subject=o.site.site_id, data=o
                )
            ),
            o.site.site_id,
        )
        for o in load_catalogue(REPO_ROOT / "catalogue").offers
    ]
    async with (
        run_services(
            [lambda: placement_app.build(settings), lambda: placement_app.build(settings)]
        ) as workers,
        following(kafka, Tracker()) as tracker,
    ):
        await produce(kafka, offers, idempotent=False)
        yield settings, tracker, workers


def cheap_job() -> JobRequest:
    """Only the Chinese-designed accelerators are under 2,000 KRW/GPU-h: EXP-01 decides this job."""
    return JobRequest.model_validate(
        {
            "tenant_id": "hanbit-ai",
            "client_request_id": uuid.uuid4().hex,
            "name": "cheap batch",
            "kind": JobKind.BATCH,
            "gpu_count": 8,
            "expected_hours": 1,
            "max_price_krw_per_gpu_hour": 2000,
            "deadline": "2030-01-01T00:00:00Z",
        }
    )


async def decide(settings: Settings, tracker: Tracker) -> tuple[str, str]:
    request = cheap_job()
    await produce(settings.bootstrap_servers, request_events([request], TEST_KEYS.tenants), idempotent=False)
    trace = tracker.trace(request.job_id)
    assert await wait_until(lambda: bool(trace.placed or trace.rejected), within=30)
    explanation = trace.placed[0].explanation if trace.placed else trace.rejected[0].explanation
    assert explanation is not None
    return ("placed" if trace.placed else "rejected"), explanation.policy_revision


async def every_worker_decides(settings: Settings, tracker: Tracker, outcome: tuple[str, str]) -> bool:
    """Eight decisions in a row give `outcome` (placed or rejected, under which revision). Each worker
    verifies a revision in its own child process before switching, so the switch lands at slightly
    different moments; once it has, every decision, whichever worker makes it, uses the new one."""
    streak = 0
    for _ in range(80):
        streak = streak + 1 if await decide(settings, tracker) == outcome else 0
        if streak == 8:
            return True
    return False


def policy_copy(tmp_path: Path, exp01_mode: str) -> Path:
    copy = tmp_path / f"policies-{exp01_mode}"
    shutil.copytree(REPO_ROOT / "policies", copy)
    data = json.loads((copy / "data.json").read_text())
    data["rules"]["EXP-01"]["mode"] = exp01_mode
    (copy / "data.json").write_text(json.dumps(data, indent=2))
    return copy


async def test_publish_switches_every_worker_without_restart(placement: Placement, tmp_path: Path) -> None:
    settings, tracker, workers = placement
    shipped = PolicyBundle.load(REPO_ROOT / "policies").revision
    assert await decide(settings, tracker) == ("rejected", shipped)

    relaxed = policy_copy(tmp_path, "dryrun")
    assert await policy_publish(relaxed, signing_as(settings, TEST_KEYS.officer), TEST_KEYS_OFFICER) == 0
    revision = PolicyBundle.load(relaxed).revision
    assert await every_worker_decides(settings, tracker, ("placed", revision))
    assert all(any(s.consumer and s.consumer.assignment() for s in w.broker.subscribers) for w in workers)  # type: ignore[attr-defined]


async def test_an_unsigned_revision_on_the_topic_is_never_activated(
    placement: Placement, tmp_path: Path
) -> None:
    settings, tracker, _ = placement
    # Someone with write access to the topic, but not the officer's key, relaxes EXP-01.
    unsigned = PolicyBundle.load(policy_copy(tmp_path, "warn"))
    await produce(
        settings.bootstrap_servers,
        [(published_event(published_revision(unsigned), signer=None), PUBLICATION_KEY)],
        idempotent=False,
    )
    # Then the officer publishes a revision that denies (revisions are read in order, on one partition).
    strict = policy_copy(tmp_path, "deny")
    residency = strict / "residency" / "residency.rego"
    residency.write_text(residency.read_text() + "\n# Republished by the officer.\n")
    assert await policy_publish(strict, signing_as(settings, TEST_KEYS.officer), TEST_KEYS_OFFICER) == 0
    revision = PolicyBundle.load(strict).revision
    assert await every_worker_decides(settings, tracker, ("rejected", revision))
    assert revision in {d.policy_revision for d in tracker.decisions.values()}
    assert unsigned.revision not in {d.policy_revision for d in tracker.decisions.values()}


async def test_a_revision_failing_its_tests_is_not_published(placement: Placement, tmp_path: Path) -> None:
    settings, _, _ = placement
    assert (
        await policy_publish(broken_copy(tmp_path), signing_as(settings, TEST_KEYS.officer), "someone") == 1
    )


def broken_copy(tmp_path: Path) -> Path:
    broken = policy_copy(tmp_path, "deny")
    residency = broken / "residency" / "residency.rego"
    rule = residency.read_text()
    assert 'country != "KR"' in rule  # the change below must change something
    residency.write_text(rule.replace('country != "KR"', 'country == "KR"'))
    return broken
