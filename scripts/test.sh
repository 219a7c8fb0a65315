#!/usr/bin/env bash
# Sets everything up, then runs the linters, the type checker and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Apache Kafka and the OPA server, for the production-stack tests (cached after the first run).
scripts/setup-production-stack.sh >/dev/null
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy contracts services sovereign tests bench
.venv/bin/python -m sovereign contracts --check
(cd examples/typescript-client && node_modules/.bin/tsc --noEmit)
status=0
# Two workers; a module stays on one (tests/conftest.py says which are spread).
.venv/bin/pytest -n 2 "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
