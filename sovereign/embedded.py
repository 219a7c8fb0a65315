"""`sovereign broker`: the embedded Tansu broker in the foreground, with every topic created."""

from __future__ import annotations

import asyncio
import signal
import threading

from services.shared.embedded_broker import EmbeddedBroker
from services.shared.kafka import all_topics, ensure_topics


def serve_embedded_broker(port: int | None, partitions: int) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with EmbeddedBroker(port) as broker:
        asyncio.run(ensure_topics(broker.bootstrap_servers, all_topics(), partitions))
        print(broker.bootstrap_servers, flush=True)
        print(
            f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers} KAFKA_IDEMPOTENT_PRODUCER=false",
            flush=True,
        )
        stop.wait()
    return 0
