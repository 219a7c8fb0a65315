"""Event contracts shared by every service: the envelope, the payloads, topics and their pinned schemas."""

from contracts.envelope import AnyEvent, Contract, Event
from contracts.events import (
    EVENT_MODELS,
    TOPICS,
    dead_letter_topic,
    job_id_for,
    model_for,
    stream_tenant,
    tenant_stream,
)

__all__ = [
    "EVENT_MODELS",
    "TOPICS",
    "AnyEvent",
    "Contract",
    "Event",
    "dead_letter_topic",
    "job_id_for",
    "model_for",
    "stream_tenant",
    "tenant_stream",
]
