#!/usr/bin/env bash
# Starts the compose broker: the admin's password into the configuration, the storage formatted once with
# the admin's SCRAM credential (KRaft keeps SCRAM users in its metadata, so the first must exist before the
# broker does), then the broker itself. The other principals are made by kafka-init.sh, as the admin.
set -euo pipefail
password="$(cat /run/secrets/kafka-admin)"
template="$(cat /deploy/kafka/server.properties)"
printf '%s\n' "${template//@ADMIN_PASSWORD@/$password}" > /tmp/server.properties
/opt/kafka/bin/kafka-storage.sh format --config /tmp/server.properties --cluster-id "$CLUSTER_ID" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$password]" --ignore-formatted
exec /opt/kafka/bin/kafka-server-start.sh /tmp/server.properties
