#!/usr/bin/env bash
# Writes the admin's client configuration (SASL_SSL, SCRAM-SHA-512) to /tmp/admin.properties, for the
# health check and kafka-init.sh.
set -euo pipefail
cat > /tmp/admin.properties <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat /run/secrets/kafka-admin)";
ssl.truststore.type=PEM
ssl.truststore.location=/secrets/tls/ca.pem
PROPERTIES
