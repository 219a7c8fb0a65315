"""Every consumer of every service, fed generated payloads (hypothesis): arbitrary bytes, arbitrary JSON,
oversized records, and the topic's golden example with a field replaced, removed or added (re-signed by
its rightful sender when the result is still a valid event, so the fuzzing reaches past the signature
check). Whatever comes in, the consumer path (parse, then apply in a transaction) never raises and never
hangs: each record is applied or refused with a reason, which the runtime sends to the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import AnyEvent
from contracts.envelope import SLUG_PATTERN
from contracts.events import PolicyPublishedEvent
from contracts.limits import BROKER_MESSAGE_MAX_BYTES
from contracts.pinning import EXAMPLES_DIR
from services.registry import SERVICES
from services.shared.batch import handle_batch, parse_records
from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.domain.policy_check import activate_published
from services.shared.domain.signing import Signer
from services.shared.runtime import Service
from services.shared.settings import REPO_ROOT
from tests.conftest import KEYRING, TEST_KEYS, TEST_KEYS_OFFICER, service_settings

UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANT_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Service]]:
    """Each service as `sovereign run` builds it (its handlers, keyring and SQLite database), not started."""
    settings = service_settings("127.0.0.1:1", tmp_path_factory.mktemp("fuzz"))
    built = [entry.build(settings) for entry in SERVICES.values()]
    yield built
    for service in built:
        service.engine.dispose()


def consumers(services: list[Service]) -> list[tuple[Service, str]]:
    return [(service, topic) for service in services for topic in service.handlers]


def sender(event: AnyEvent) -> Signer | None:
    """Who may sign this event, among the test keys."""
    tenant = getattr(event.data, "tenant_id", None)
    if event.type in {"jobs.requested", "jobs.cancel"}:
        return TEST_KEYS.tenants.get(str(tenant))
    if event.type in {
        "capacity.offered",
        "capacity.updated",
        "usage.reported",
        "jobs.started",
        "jobs.completed",
    }:
        return TEST_KEYS.factory
    if event.type == "policy.published":
        return TEST_KEYS.officer
    return None


def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, (*path, key))]
    if isinstance(node, list):
        return [leaf for index, value in enumerate(node) for leaf in leaves(value, (*path, index))]
    return [path]


def like(value: Any) -> st.SearchStrategy[Any]:
    """Another value of the same kind: any integer, any float, any text, another id or instant."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 10**6) | st.integers(-(2**70), 2**70)
    if isinstance(value, float):
        return st.floats(0, 1e6) | st.floats(allow_nan=False)
    if isinstance(value, str):
        if UUID_TEXT.fullmatch(value):
            return st.uuids().map(str)
        if INSTANT_TEXT.match(value):
            return st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())
        return st.text(max_size=30) | st.from_regex(SLUG_PATTERN, fullmatch=True)
    return JSON_VALUES


@st.composite
def mutated_example(draw: st.DrawFn, topic: str) -> bytes:
    """The topic's golden example with one to three values changed: mostly to another value of the same
    kind (so many stay valid events and reach the handler), sometimes removed, sometimes a key added."""
    document: Any = json.loads((EXAMPLES_DIR / f"{topic}.json").read_text())
    for path in draw(st.lists(st.sampled_from(leaves(document)), min_size=1, max_size=3, unique=True)):
        *parents, last = path
        node = document
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["like", "like", "like", "remove", "add"]))
        if action == "like" or isinstance(node, list):
            node[last] = draw(like(node[last]))
        elif action == "remove":
            del node[last]
        else:
            node[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
    return json.dumps(document).encode()


def payloads(topic: str) -> st.SearchStrategy[bytes]:
    # Mostly near-valid events, which go deepest.
    return st.one_of(
        mutated_example(topic),
        mutated_example(topic),
        mutated_example(topic),
        st.binary(max_size=200),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        st.just(b"{" + b" " * (BROKER_MESSAGE_MAX_BYTES + 1) + b"}"),
    )


def signed_if_valid(model: type[AnyEvent], payload: bytes) -> bytes:
    """A mutation that is still a valid event, signed by its rightful sender: the fuzzing goes on past the
    signature check into the handler itself."""
    try:
        event = model.model_validate_json(payload)
    except ValidationError:
        return payload
    signer = sender(event)
    return signer.sign(event).model_dump_json().encode() if signer else payload


def consume_as_the_runtime_does(service: Service, topic: str, payload: bytes) -> None:
    """One record (re-signed while it is a valid event) through the consumer's path: it is an event or
    refused, then applied or refused, and every refusal says why."""
    model, handle = service.handlers[topic]
    record = SimpleNamespace(
        topic=topic, partition=0, offset=0, key=b"fuzz", value=signed_if_valid(model, payload), headers=[]
    )
    events, refused = parse_records(model, [record])
    assert len(events) + len(refused) == 1, topic
    refused += handle_batch(service.engine, handle, events)
    assert len(refused) <= 1, topic
    for _, error in refused:
        assert str(error), f"{topic}: a refusal without a reason: {error!r}"


@settings(
    max_examples=100,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_consumer_refuses_or_applies_whatever_it_is_fed(
    services: list[Service], data: st.DataObject
) -> None:
    for service, topic in consumers(services):
        consume_as_the_runtime_does(
            service, topic, data.draw(payloads(topic), label=f"{service.name} {topic}")
        )


def test_every_consumer_is_fuzzed(services: list[Service]) -> None:
    """Each service's every consumer has a golden example to mutate, and the list is what the services
    subscribe in their consumer groups."""
    pairs = consumers(services)
    assert all((EXAMPLES_DIR / f"{topic}.json").exists() for _, topic in pairs)
    assert [topic for _, topic in pairs] == [topic for service in services for topic in service.consumed]
    assert {topic for _, topic in pairs} >= {
        "jobs.requested",
        "jobs.cancel",
        "usage.reported",
        "capacity.offered",
    }


def test_coverage_guided_fuzzing_of_every_consumer_finds_no_crash(
    services: list[Service], tmp_path: Path
) -> None:
    """atheris (libFuzzer) for 20 seconds over the same consumer path, guided by the coverage of the services'
    and contracts' code: an exception escaping the path, a refusal without a reason, or a hang stops it with
    a non-zero exit and the input that did it."""
    pytest.importorskip("atheris", reason="atheris ships wheels for x86_64 Linux only")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz_consumers_atheris",
            str(tmp_path / "corpus"),
            "-max_total_time=20",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO: Instrumenting")]
    assert result.returncode == 0, "\n".join(lines[-40:])
    runs = re.search(r"stat::number_of_executed_units: (\d+)", result.stderr)
    assert runs and int(runs.group(1)) > 1000, "\n".join(lines[-20:])
    # Beyond the two seeds per consumer: the coverage led it to inputs of its own.
    assert len(list((tmp_path / "corpus").iterdir())) > 2 * len(consumers(services))


@pytest.fixture(scope="module")
def current_engine() -> EmbeddedRegoEngine:
    return EmbeddedRegoEngine(PolicyBundle.load(REPO_ROOT / "policies"))


@settings(
    max_examples=100,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads("policy.published"), as_the_officer=st.booleans())
def test_the_broadcast_policy_subscriber_refuses_or_activates_whatever_it_is_fed(
    current_engine: EmbeddedRegoEngine, payload: bytes, as_the_officer: bool
) -> None:
    """Every placement worker's own subscriber to policy.published (outside the consumer groups): what does
    not parse is refused by FastStream's parser and dead-lettered by the middleware; what parses is
    activated or refused, never raised. Half the events name the test officer as publisher, so they get
    past the signature check to the bundle's checks."""
    try:
        event = PolicyPublishedEvent.model_validate_json(payload)
    except ValidationError:
        return
    if as_the_officer:
        event = event.model_copy(
            update={"data": event.data.model_copy(update={"published_by": TEST_KEYS_OFFICER})}
        )
    activated = asyncio.run(activate_published(current_engine, TEST_KEYS.officer.sign(event), KEYRING))
    assert activated is None or activated.revision == event.data.policy_revision
