"""Every bound on what can grow, written once. The bounds on what outside parties send (requests, offers)
are chosen so that the largest valid input yields derived events (decisions, placements, outcomes and their
tenant copies) well below the broker's message limit: `tests/test_event_sizes.py` builds maximal inputs and
measures every event they cause."""

from __future__ import annotations

# The largest record the brokers take. Apache Kafka's `message.max.bytes` (deploy/kafka/server.properties)
# and every producer's `max.request.size` are set from it, so Tansu (the embedded broker, whose own limit is
# larger) and Kafka refuse the same records, at the producer.
BROKER_MESSAGE_MAX_BYTES = 1024 * 1024
# An envelope from outside the marketplace (a tenant, a factory, an officer): a bigger one is refused
# before it is parsed.
MAX_ENVELOPE_BYTES = 256 * 1024
# What a service writes from the largest valid inputs stays under this: half the broker's limit.
MAX_DERIVED_EVENT_BYTES = BROKER_MESSAGE_MAX_BYTES // 2
# Objects and arrays inside objects and arrays: JSON deeper than this is refused unread.
MAX_JSON_DEPTH = 32

# A job request.
MAX_NAME_LENGTH = 200
MAX_CLIENT_REQUEST_ID_LENGTH = 128
MAX_DATASETS = 32
MAX_REGIONS = 32
MAX_REGION_LENGTH = 64
MAX_REASON_LENGTH = 500

# The market: how many sites placement knows, and each one's pools and stated assumptions. An offer of a
# site beyond MAX_SITES is refused (capacity.rejected) until another site is withdrawn.
MAX_SITES = 32
MAX_POOLS_PER_SITE = 8
MAX_ASSUMPTIONS = 16
MAX_ASSUMPTION_LENGTH = 300
MAX_MODEL_LENGTH = 32

# The text of what a policy finds at one site (violations, warnings, exemptions), as a decision and an
# explanation carry it: officers write the rules, but a faulty revision must not make events the broker
# refuses. The catalogue's rules find at most about 4 KiB at a site.
MAX_FINDING_BYTES_PER_SITE = 8 * 1024
