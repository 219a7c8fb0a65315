"""Plumbing every service shares: settings, logging, database, outbox, inbox, Kafka wiring, policy engine."""
