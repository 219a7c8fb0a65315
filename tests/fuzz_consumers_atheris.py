"""Coverage-guided fuzzing (atheris, libFuzzer) of every consumer of every service, on the path the runtime
takes: parse the record, apply it in a transaction, refuse it with a reason. The first byte of an input
picks the consumer, the second how the rest makes the record (mostly edits of the topic's golden
example, sometimes the bytes themselves); a record that is still a valid event is re-signed by its
rightful sender, so mutations reach past the signature check into the handlers. An exception escaping
that path, or a refusal without a reason, is a crash: libFuzzer stops and writes the input to a file.

    python -m tests.fuzz_consumers_atheris CORPUS_DIR -max_total_time=20   # what the test runs
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["services", "contracts"]):
    from contracts.pinning import EXAMPLES_DIR
    from services.registry import SERVICES
    from services.shared.runtime import Service
    from tests.conftest import service_settings
    from tests.test_fuzz_consumers import (
        INSTANT_TEXT,
        UUID_TEXT,
        consume_as_the_runtime_does,
        consumers,
        leaves,
    )


def build_services(data_dir: Path) -> list[tuple[Service, str]]:
    settings = service_settings("127.0.0.1:1", data_dir)
    return consumers([entry.build(settings) for entry in SERVICES.values()])


def write_seeds(corpus: Path, pairs: list[tuple[Service, str]]) -> None:
    """Per consumer: its golden example as a raw record, and the same changed by a few structured edits."""
    corpus.mkdir(parents=True, exist_ok=True)
    for index, (service, topic) in enumerate(pairs):
        example = (EXAMPLES_DIR / f"{topic}.json").read_bytes()
        (corpus / f"{index:02d}-{service.name}-{topic}-raw").write_bytes(bytes([index, RAW]) + example)
        (corpus / f"{index:02d}-{service.name}-{topic}-edits").write_bytes(bytes([index, EDITS]) + b"seed")


# The second byte of an input: one in RAW_SHARE is a raw record, the others a few edits of the example.
RAW, EDITS, RAW_SHARE = 0, 1, 8


def like(value: Any, provider: atheris.FuzzedDataProvider) -> Any:
    """Another value of the same kind, from the fuzzer's bytes."""
    if isinstance(value, bool):
        return provider.ConsumeBool()
    if isinstance(value, int):
        return provider.ConsumeIntInRange(-(2**70), 2**70)
    if isinstance(value, float):
        return provider.ConsumeRegularFloat()
    if isinstance(value, str) and UUID_TEXT.fullmatch(value):
        return str(uuid.UUID(bytes=provider.ConsumeBytes(16).ljust(16, b"\0")))
    if isinstance(value, str) and INSTANT_TEXT.match(value):
        return datetime.fromtimestamp(provider.ConsumeIntInRange(0, 2**32), UTC).isoformat()
    return provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 40))


def edited(example: bytes, data: bytes) -> bytes:
    """The golden example with one to three values changed to others of their kind, or removed: events that
    mostly still parse, so the fuzzer's coverage comes from the handlers, not the JSON parser. Each input
    gets an envelope id of its own (derived from it, so a crash reproduces), or the inbox would take most
    of them for redeliveries of the example."""
    provider = atheris.FuzzedDataProvider(data)
    document: Any = json.loads(example)
    document["id"] = str(uuid.uuid5(uuid.NAMESPACE_OID, data.hex()))
    for _ in range(provider.ConsumeIntInRange(1, 3)):
        paths = leaves(document)
        *parents, last = paths[provider.ConsumeIntInRange(0, len(paths) - 1)]
        node = document
        for key in parents:
            node = node[key]
        if isinstance(node, dict) and provider.ConsumeIntInRange(0, 4) == 0:
            del node[last]
        else:
            node[last] = like(node[last], provider)
        if not leaves(document):
            break
    return json.dumps(document).encode()


def fuzz_one(pairs: list[tuple[Service, str]], data: bytes) -> None:
    if len(data) < 2:
        return
    service, topic = pairs[data[0] % len(pairs)]
    if data[1] % RAW_SHARE == RAW:  # raw bytes are mostly the hypothesis test's: a few here
        payload = data[2:]
    else:
        payload = edited((EXAMPLES_DIR / f"{topic}.json").read_bytes(), data[2:])
    consume_as_the_runtime_does(service, topic, payload)


def main(argv: list[str]) -> None:
    corpora = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    if not corpora:
        sys.exit("usage: python -m tests.fuzz_consumers_atheris CORPUS_DIR [libFuzzer options]")
    # libFuzzer ends the process itself: the services' databases go beside the corpus, not in a temporary
    # directory nothing would remove.
    pairs = build_services(corpora[0].parent / f"{corpora[0].name}-databases")
    for corpus in corpora:
        write_seeds(corpus, pairs)
    atheris.Setup(argv, lambda data: fuzz_one(pairs, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
