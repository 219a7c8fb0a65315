#!/usr/bin/env bash
# Sets everything up, then runs the whole marketplace on the embedded defaults and prints a report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/sovereign demo "$@"
