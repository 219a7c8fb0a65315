"""Placement deciding with the OPA server (as compose runs it, over policies/), and failing closed when that
server hangs or crashes: nothing is placed without a decision, and the jobs held meanwhile are decided once
it is back. (The fault suite's stand-in still covers an HTTP 500, which the real server cannot be made to
give.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.placement.storage import DecisionRow
from services.shared.domain.policy import EmbeddedRegoEngine, OpaServerEngine, PolicyBundle, PolicyEngineError
from services.shared.domain.policy_check import activate_published
from sovereign.stack.opa import LocalOpa
from sovereign.verification.invariants import check
from sovereign.verification.watch import produce
from sovereign.verification.workload import request_events
from tests.conftest import KEYRING, TEST_KEYS, normalised, published_event, published_revision
from tests.fault_harness import running_cluster, seeded_workload
from tests.test_faults import CATALOGUE, assert_held_for_the_policy_engine, decided
from tests.test_opa_parity import BUNDLE, cases
from tests.test_policy_publish import policy_copy

pytestmark = pytest.mark.production_stack


async def test_placement_on_the_opa_server_fails_closed_while_it_hangs_or_is_down(tmp_path: Path) -> None:
    server = LocalOpa(log_path=tmp_path / "opa.log")
    server.start()
    workload = seeded_workload(5, jobs=16, catalogue_dir=CATALOGUE, cancels=0, capacity_changes=0)
    batches = [workload.requests[i::3] for i in range(3)]
    try:
        async with running_cluster(tmp_path, env={"OPA_URL": server.url}) as cluster:
            bootstrap = cluster.settings.bootstrap_servers
            await produce(bootstrap, request_events(batches[0], TEST_KEYS.tenants), idempotent=False)
            await cluster.settle({str(r.job_id) for r in batches[0]})
            with Session(cluster.engine("placement")) as session:
                engines = set(session.exec(select(DecisionRow.engine)).all())
            assert engines == {"opa"}, engines  # decided by the server, not in-process
            for fault, batch in zip(("hang", "crash"), batches[1:], strict=True):
                server.pause() if fault == "hang" else server.kill()
                await produce(bootstrap, request_events(batch, TEST_KEYS.tenants), idempotent=False)
                await assert_held_for_the_policy_engine(cluster, {str(r.job_id) for r in batch}, fault)
            server.start()  # on the same port, as a restarted container
            await cluster.settle(workload.job_ids)
            history = await cluster.history()
            faulted = {str(r.job_id) for batch in batches[1:] for r in batch}
            assert faulted <= decided(history)  # decided again once the server was back
            violations = check(history)
            assert not violations, "\n".join(map(str, violations))
    finally:
        server.kill()


@pytest.fixture
def opa_server(tmp_path: Path) -> Iterator[LocalOpa]:
    server = LocalOpa(log_path=tmp_path / "opa.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def revision_with(modes: dict[str, str]) -> PolicyBundle:
    """The repository's policies with some rules' modes changed: a revision that decides differently."""
    files = dict(BUNDLE.files)
    data = json.loads(files["data.json"])
    for rule, mode in modes.items():
        data["rules"][rule]["mode"] = mode
    files["data.json"] = json.dumps(data)
    return PolicyBundle(files)


def test_a_published_revision_reaches_the_opa_server_and_its_decisions_follow(opa_server: LocalOpa) -> None:
    current = OpaServerEngine(opa_server.url, BUNDLE, timeout_seconds=5)
    documents = cases()
    assert current.difference() is None  # the server runs policies/, as compose mounts it
    before = [current.decide(document) for document in documents]
    proposed = revision_with({"RES-01": "warn", "EXP-01": "dryrun"})
    published = current.publish(proposed)
    assert published.revision == proposed.revision and published.difference() is None
    embedded = EmbeddedRegoEngine(proposed)
    after = [published.decide(document) for document in documents]
    assert [normalised(a) for a in after] == [normalised(embedded.decide(d)) for d in documents]
    assert after != before  # the revision changed what the server decides
    # The old revision's engine no longer decides under its label on this server: it sees the difference.
    assert current.difference() is not None


def test_an_opa_server_running_other_policies_is_given_the_revision_before_it_decides(
    opa_server: LocalOpa,
) -> None:
    """A server restarted on other files, or changed by someone else, never decides under our revision's
    label: the engine sees the difference and installs its revision first."""
    other = revision_with({"SOV-01": "warn"})
    OpaServerEngine(opa_server.url, BUNDLE, timeout_seconds=5).publish(other)
    engine = OpaServerEngine(opa_server.url, BUNDLE, timeout_seconds=5)
    assert engine.difference() is not None
    document = cases()[0]
    assert normalised(engine.decide(document)) == normalised(EmbeddedRegoEngine(BUNDLE).decide(document))
    assert engine.difference() is None


def test_a_revision_the_opa_server_will_not_take_fails_every_decision_closed(opa_server: LocalOpa) -> None:
    broken = PolicyBundle({**BUNDLE.files, "broken.rego": "package sovereign.broken\n\nthis is not rego\n"})
    engine = OpaServerEngine(opa_server.url, broken, timeout_seconds=5)
    with pytest.raises(PolicyEngineError):
        engine.decide(cases()[0])
    with pytest.raises(PolicyEngineError):
        OpaServerEngine(opa_server.url, BUNDLE, timeout_seconds=5).publish(broken)


async def test_placement_activates_a_signed_tested_revision_on_the_opa_server_and_only_that(
    opa_server: LocalOpa, tmp_path: Path
) -> None:
    current = OpaServerEngine(opa_server.url, BUNDLE, timeout_seconds=5)
    proposed = PolicyBundle.load(policy_copy(tmp_path, "warn"))
    unsigned = published_event(published_revision(proposed), signer=None)
    assert await activate_published(current, unsigned, KEYRING) is None
    assert current.difference() is None  # refused before anything reached the server
    activated = await activate_published(current, published_event(published_revision(proposed)), KEYRING)
    assert isinstance(activated, OpaServerEngine) and activated.revision == proposed.revision
    assert activated.difference() is None
