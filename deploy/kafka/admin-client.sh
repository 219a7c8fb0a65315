#!/usr/bin/env bash
# Writes the admin's client configuration (SASL_SSL, SCRAM-SHA-512) to $KAFKA_CONFIG_DIR/admin.properties,
# for the health check. The paths default to compose's, as in start.sh.
set -euo pipefail
SECRETS_DIR="${SECRETS_DIR:-/run/secrets}"
KAFKA_TLS_DIR="${KAFKA_TLS_DIR:-/secrets/tls}"
KAFKA_CONFIG_DIR="${KAFKA_CONFIG_DIR:-/tmp}"
umask 077
cat > "$KAFKA_CONFIG_DIR/admin.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$SECRETS_DIR/kafka-admin")";
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_TLS_DIR/ca.pem
PROPERTIES
