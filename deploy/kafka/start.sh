#!/usr/bin/env bash
# Starts the broker: server.properties with its @NAME@ filled in, the storage formatted once with the admin's
# SCRAM credential (KRaft keeps SCRAM users in its metadata, so the first must exist before the broker
# does), then the broker itself. The other principals are made by kafka-init (`sovereign kafka-init`), as
# the admin. Every setting defaults to compose's; the suite and scripts/production-check.sh set them to
# run this same script as a process on loopback.
set -euo pipefail
KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
SECRETS_DIR="${SECRETS_DIR:-/run/secrets}"
KAFKA_TLS_DIR="${KAFKA_TLS_DIR:-/secrets/tls}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-/var/lib/kafka/data}"
KAFKA_CONFIG_DIR="${KAFKA_CONFIG_DIR:-/tmp}"
KAFKA_LISTEN_HOST="${KAFKA_LISTEN_HOST:-}"
KAFKA_ADVERTISED_HOST="${KAFKA_ADVERTISED_HOST:-kafka}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"

password="$(cat "$SECRETS_DIR/kafka-admin")"
config="$(cat "$(dirname "$0")/server.properties")"
config="${config//@ADMIN_PASSWORD@/$password}"
config="${config//@TLS_DIR@/$KAFKA_TLS_DIR}"
config="${config//@DATA_DIR@/$KAFKA_DATA_DIR}"
config="${config//@LISTEN_HOST@/$KAFKA_LISTEN_HOST}"
config="${config//@ADVERTISED_HOST@/$KAFKA_ADVERTISED_HOST}"
config="${config//@CONTROLLER_PORT@/$KAFKA_CONTROLLER_PORT}"
config="${config//@PORT@/$KAFKA_PORT}"
(umask 077 && printf '%s\n' "$config" > "$KAFKA_CONFIG_DIR/server.properties")
"$KAFKA_HOME/bin/kafka-storage.sh" format --config "$KAFKA_CONFIG_DIR/server.properties" \
    --cluster-id "$CLUSTER_ID" --add-scram "SCRAM-SHA-512=[name=admin,password=$password]" --ignore-formatted
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$KAFKA_CONFIG_DIR/server.properties"
