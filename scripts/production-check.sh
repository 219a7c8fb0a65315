#!/usr/bin/env bash
# Sets everything up, then boots the production configuration of compose.yaml as processes (PostgreSQL,
# Apache Kafka over SASL_SSL with the ACLs, the OPA server, the four services), submits signed requests from
# two tenants, checks the invariants and the ACL refusals, prints a line per check and stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-production-stack.sh >/dev/null
exec .venv/bin/python -m sovereign.stack.production_check "$@"
