"""The production programs (PostgreSQL, Apache Kafka, the OPA server) run here as processes, with the
files compose.yaml gives them, for the suite, the production check and the benchmark."""
